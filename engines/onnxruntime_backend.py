"""ONNX Runtime: TensorRT EP -> CUDA EP -> CPU, with the GPU's presence checked first.

onnxruntime-gpu *lists* the TensorRT and CUDA providers on a machine with no
GPU; asking for them there only produces warnings and a silent CPU fallback.
So we ask for GPU providers only when :func:`cuda_device_name` finds a real GPU,
and report the providers the session actually uses.

Inputs and outputs are bound with IOBinding to torch tensors' own memory (by
``data_ptr``): on CPU that saves the numpy round trip, and with the CUDA or
TensorRT provider the latents stay on the GPU between steps.  ORT runs the fp32
export (its TensorRT provider builds fp16 plans from it itself).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from engines.base import EngineInfo, cuda_device_name, module_installed, warmup_with_examples
from engines.cache import EngineCache, cache_key, sha256_bytes
from engines.errors import BackendUnavailableError, DeviceOutOfMemoryError, is_out_of_memory
from engines.export import ORT_OPSET, export_onnx
from engines.graphs import Graph

# ONNX tensor element types (onnx.TensorProto) of the torch dtypes a graph may declare.
_ONNX_TYPES = {torch.float32: 1, torch.uint8: 2, torch.int32: 6, torch.int64: 7, torch.bool: 9,
               torch.float16: 10, torch.bfloat16: 16}
_TORCH_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16,
                "tensor(bfloat16)": torch.bfloat16, "tensor(int64)": torch.int64, "tensor(int32)": torch.int32,
                "tensor(bool)": torch.bool, "tensor(uint8)": torch.uint8}


def unavailable_reason() -> str | None:
    if not module_installed("onnxruntime"):
        return "onnxruntime is not installed (pip install onnxruntime, or previz[gpu] for onnxruntime-gpu)"
    return None


def provider_chain(available: list[str], gpu: str | None, trt_cache_dir: Path | None) -> list[Any]:
    """Which providers to ask for, best first.  Pure, so it is testable without a GPU."""
    chain: list[Any] = []
    if gpu:
        if "TensorrtExecutionProvider" in available and trt_cache_dir is not None:
            chain.append(
                (
                    "TensorrtExecutionProvider",
                    {
                        "trt_fp16_enable": True,
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(trt_cache_dir),
                        "trt_timing_cache_enable": True,
                        "trt_timing_cache_path": str(trt_cache_dir),
                    },
                )
            )
        if "CUDAExecutionProvider" in available:
            chain.append("CUDAExecutionProvider")
    chain.append("CPUExecutionProvider")
    return chain


class OrtEngine:
    def __init__(self, graph: Graph, onnx_path: Path, *, cache: EngineCache, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.graph = graph
        gpu = cuda_device_name()
        trt_dir: Path | None = None
        self._pin_key: str | None = None
        if gpu and "TensorrtExecutionProvider" in ort.get_available_providers():
            # ORT's TensorRT EP keeps its own plan files; we pin them by hash.
            self._pin_key = cache_key(
                onnx_sha256=sha256_bytes(onnx_path.read_bytes()),
                shape_profile=graph.shape_profile(),
                precision="fp16",
                runtime="onnxruntime-trt",
                runtime_version=ort.__version__,
                gpu=gpu,
            )
            trt_dir = cache.pinned_dir(self._pin_key)
        self._cache = cache
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Spin while a run is in flight (hundreds of small kernels, each a pool
        # barrier), but stop when it ends: the take loop alternates two sessions
        # with numpy work between runs, and idle spinners would steal its cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(onnx_path),  # a path, so external weight files resolve beside it
            sess_options=options, providers=provider_chain(ort.get_available_providers(), gpu, trt_dir)
        )
        providers = tuple(self.session.get_providers())
        on_gpu = providers[0] != "CPUExecutionProvider"
        self.device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
        self.queues_work = False  # run() waits for ORT's own stream (see run)
        (meta,) = self.session.get_outputs()
        if not all(isinstance(d, int) for d in meta.shape) or meta.type not in _TORCH_TYPES:
            raise BackendUnavailableError(f"{onnx_path}: output {meta.name} is {meta.type} {meta.shape}; "
                                          "previz exports static shapes of plain tensor types")
        self._out_shape, self._out_dtype = tuple(meta.shape), _TORCH_TYPES[meta.type]
        if self._pin_key:
            # The TensorRT EP builds its plans on the first run: run once now and
            # record them, so the next start loads exactly these and nothing else.
            warmup_with_examples(self, graph)
            cache.pin_dir(self._pin_key)
        self.info = EngineInfo(
            backend="onnxruntime",
            graph=graph.name,
            device=gpu if gpu and on_gpu else "cpu",
            precision="fp16" if providers[0] == "TensorrtExecutionProvider" else "fp32",
            providers=providers,
            details={"onnxruntime": ort.__version__, "onnx": str(onnx_path)},
        )

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        binding = self.session.io_binding()
        device_type, device_id = self.device.type, self.device.index or 0
        held = []  # the bound tensors must outlive the run: ORT reads their memory, not a copy
        for name, shape in self.graph.inputs.items():
            value = inputs[name].to(self.device, getattr(torch, self.graph.dtype(name))).contiguous()
            if tuple(value.shape) != tuple(shape):
                raise ValueError(f"{self.graph.name} input {name} has shape {tuple(value.shape)}, expected {shape}")
            held.append(value)
            binding.bind_input(name, device_type, device_id, _ONNX_TYPES[value.dtype], list(shape), value.data_ptr())
        # A fresh output per run: callers hold one output while asking for the next (guidance).
        out = torch.empty(self._out_shape, dtype=self._out_dtype, device=self.device)
        binding.bind_output(self.graph.output, device_type, device_id, _ONNX_TYPES[out.dtype], list(out.shape),
                            out.data_ptr())
        if device_type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # inputs made by torch kernels are complete
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:  # ORT's pybind errors share no useful base class; only OOM is ours to type
            if is_out_of_memory(exc):
                raise DeviceOutOfMemoryError(f"{self.graph.name}: out of memory on {self.device}") from exc
            raise
        if device_type == "cuda":
            binding.synchronize_outputs()  # ORT's stream, not torch's: finish before torch reads `out`
        return {self.graph.output: out}

    def warmup(self) -> None:
        warmup_with_examples(self, self.graph)

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]


def _env_threads() -> int | None:
    raw = os.environ.get("PREVIZ_ORT_THREADS", "")
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise BackendUnavailableError(f"PREVIZ_ORT_THREADS = {raw!r}: expected a whole number of threads >= 1",
                                      field="backend", value=raw)
    return int(raw)


def create(graph: Graph, cache_dir: Path, **options: Any) -> OrtEngine:
    if options.get("precision") not in (None, "auto", "fp32"):
        raise BackendUnavailableError(
            f"onnxruntime runs the fp32 export (its TensorRT provider picks fp16 itself); precision "
            f"{options['precision']!r} is for the torch and tensorrt backends", field="precision",
            value=options["precision"])
    path = export_onnx(graph, cache_dir, opset=ORT_OPSET)
    threads = options.get("threads") or _env_threads()
    return OrtEngine(graph, path, cache=EngineCache(Path(cache_dir) / "engines"), threads=threads)
