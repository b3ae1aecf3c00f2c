"""torch -> ONNX with the dynamo exporter, cached by graph fingerprint.

The ONNX file is the one artifact every non-torch runtime starts from: ONNX
Runtime runs it, TensorRT builds plans from it.  The dynamo exporter handles
``aten::rms_norm`` (Wan's QK norm) that the legacy exporter cannot.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from engines.atomic import atomic_path, atomic_write
from engines.errors import EngineCacheError
from engines.graphs import Graph

OPSET = 18  # TensorRT and its fp16 copy: the opset its ONNX parser is known to take
ORT_OPSET = 23  # ONNX Runtime: native Attention / RotaryEmbedding kernels
EXTERNAL_DATA_BYTES = 1 << 30

# The exporter warns that torchvision's detection ops are unavailable; we export
# no torchvision op, so that note is noise in a filmmaker's terminal.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def onnx_dir(cache_dir: Path, graph: Graph, opset: int) -> Path:
    return Path(cache_dir) / "onnx" / f"{graph.fingerprint}-op{opset}"


def export_onnx(graph: Graph, cache_dir: Path, *, opset: int = OPSET) -> Path:
    """The graph's ONNX file, exported on first use and reused afterwards."""
    out_dir = onnx_dir(cache_dir, graph, opset)
    path = out_dir / f"{graph.name}.onnx"
    cast = sorted({str(p.dtype) for p in graph.module.parameters()} - {"torch.float32"})
    if cast:  # a torch engine cast this module in place; its export would pass as the fp32 graph's
        raise EngineCacheError(f"the {graph.name} graph's weights are {', '.join(cast)}: export from an fp32 "
                               "graph (build the graph afresh; a bf16/fp16 torch engine owns the one it ran)")
    if (out_dir / "export.json").is_file() and path.is_file():
        check_external_data(path)
        return path
    args = tuple(graph.example_inputs().values())
    # Export into a temp dir and rename it into place, so an interrupted export
    # never leaves a half-written model that a later run would trust.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{graph.fingerprint[:12]}."))
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph.export_module(opset).eval(),
                args,
                dynamo=True,
                opset_version=opset,
                input_names=list(graph.inputs),
                output_names=[graph.output],
                optimize=True,
                verbose=False,
            )
        assert program is not None
        # ONNX protobufs stop at 2 GB: real checkpoints keep weights beside the graph.
        weight_bytes = sum(p.numel() * p.element_size() for p in graph.module.parameters())
        program.save(str(tmp / path.name), external_data=weight_bytes > EXTERNAL_DATA_BYTES)
        meta = {
            "graph": graph.name,
            "fingerprint": graph.fingerprint,
            "source_sha256": graph.source_sha256,
            "inputs": graph.inputs,
            "output": graph.output,
            "opset": opset,
            "torch": torch.__version__,
        }
        atomic_write(tmp / "export.json", (json.dumps(meta, indent=2) + "\n").encode())
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not out_dir.is_dir():
                raise
            shutil.rmtree(tmp)  # another process won the race; theirs is as good as ours
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def check_external_data(path: Path) -> None:
    """Refuse an ONNX file whose external weights point outside its own directory."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    base = path.parent.resolve()
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if base not in target.parents:
            raise EngineCacheError(
                f"refusing {path}: tensor {tensor.name!r} reads external data from {location!r}, "
                "outside the model's directory",
                value=str(path),
            )


def to_fp16(src: Path, dst: Path) -> Path:
    """A mixed-precision copy (fp16 inside, fp32 inputs and outputs).

    TensorRT 11 builds strongly typed networks only: precision lives in the
    graph, not in a builder flag, so fp16 engines are built from this file.
    """
    import onnx
    from onnxruntime.transformers import float16  # ORT's copy knows Resize's fp32 scales

    model = onnx.load(str(src))
    # Normalisations and the softmax stay fp32: their reductions overflow in fp16.
    block = ["LayerNormalization", "RMSNormalization", "ReduceMean", "Pow", "Softmax", "Sqrt", "Div"]
    converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    # Written under a temp name and renamed last: the .onnx exists only once it
    # (and its external weights, for models past protobuf's 2 GB) are complete.
    big = sum(len(t.raw_data) for t in converted.graph.initializer) > EXTERNAL_DATA_BYTES
    with atomic_path(dst) as tmp:
        onnx.save(converted, str(tmp), save_as_external_data=big, location=f"{dst.name}.data")
    check_external_data(dst)
    return dst
