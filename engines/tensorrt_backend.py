"""Native TensorRT: plans built from the same ONNX file, loaded only from our own cache.

GPU only, and deliberately thin: everything that can be decided without a GPU
(the ONNX export, the fp16 conversion, the cache key and manifest) lives in
shared modules that the CPU tests cover.  Written against the TensorRT 10/11
Python API: strongly typed networks (precision lives in the ONNX graph),
``execute_async_v3`` with tensor addresses, and a persistent timing cache.

The engine binds the caller's own CUDA tensors by address and a fresh output
tensor per run, and enqueues on torch's current stream, so nothing is copied
and nothing waits for the host: the take's next torch op simply follows.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engines.atomic import atomic_write
from engines.base import EngineInfo, cuda_device_name, module_installed, warmup_with_examples
from engines.cache import EngineCache, cache_key, sha256_bytes
from engines.errors import BackendUnavailableError, DeviceOutOfMemoryError
from engines.export import export_onnx, to_fp16
from engines.graphs import Graph


def unavailable_reason() -> str | None:
    if not module_installed("tensorrt"):
        return "tensorrt is not installed (pip install 'previz[gpu]')"
    if cuda_device_name() is None:
        return "no CUDA GPU found"
    if not module_installed("torch") or not _torch_cuda():
        return "TensorRT buffers need a CUDA build of torch"
    return None


def _torch_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def plan_key(onnx_bytes: bytes, graph: Graph, precision: str) -> str:
    import tensorrt as trt

    return cache_key(
        onnx_sha256=sha256_bytes(onnx_bytes),
        shape_profile=graph.shape_profile(),
        precision=precision,
        runtime="tensorrt",
        runtime_version=trt.__version__,
        gpu=cuda_device_name() or "none",
    )


def build_plan(onnx_path: Path, graph: Graph, timing_cache: Path) -> bytes:
    """Build a serialized engine with one optimisation profile at the draft shapes."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # STRONGLY_TYPED is required on 10.x for graph-defined precision, implied on 11.x.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailableError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, shape in graph.inputs.items():
        profile.set_shape(name, shape, shape, shape)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)  # stale: start afresh
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendUnavailableError(f"TensorRT failed to build an engine for {graph.name}")
    atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


class TensorRTEngine:
    def __init__(self, graph: Graph, plan: bytes, precision: str) -> None:
        import tensorrt as trt
        import torch

        self.graph = graph
        self._torch = torch
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise BackendUnavailableError(
                f"TensorRT could not load the {graph.name} engine (built by another TensorRT version or GPU?)"
            )
        self._context = self._engine.create_execution_context()
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.queues_work = True  # execute_async_v3 on torch's stream: nothing waits for it here
        self._output_shape: tuple[int, ...] = ()
        expected = {**graph.inputs, graph.output: None}
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = tuple(self._engine.get_tensor_shape(name))
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            if name not in expected or is_input != (name in graph.inputs) or (
                is_input and shape != tuple(graph.inputs[name])
            ):
                raise BackendUnavailableError(f"TensorRT engine I/O {name} {shape} does not match the graph's")
            if self._engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise BackendUnavailableError(f"TensorRT engine I/O {name} is not float32 (keep_io_types failed?)")
            if not is_input:
                self._output_shape = shape
        self.info = EngineInfo(
            backend="tensorrt",
            graph=graph.name,
            device=cuda_device_name() or "cuda",
            precision=precision,
            providers=("tensorrt",),
            details={"tensorrt": trt.__version__},
        )

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        torch = self._torch
        # Bound by address.  Freed after return, they are reused only by later work on this same
        # stream, which runs after TensorRT's, so no synchronisation is needed.
        held = []
        for name, shape in self.graph.inputs.items():
            value = inputs[name].to(self.device, torch.float32).contiguous()
            if tuple(value.shape) != tuple(shape):
                raise ValueError(f"{self.graph.name} input {name} has shape {tuple(value.shape)}, expected {shape}")
            held.append(value)
            self._context.set_tensor_address(name, value.data_ptr())
        try:
            out = torch.empty(self._output_shape, dtype=torch.float32, device=self.device)
        except torch.OutOfMemoryError as exc:
            raise DeviceOutOfMemoryError(f"{self.graph.name}: out of memory on {self.device}") from exc
        self._context.set_tensor_address(self.graph.output, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            # TensorRT reports the cause to its logger only; its scratch memory is the usual one.
            free, _ = torch.cuda.mem_get_info(self.device)
            if free < 256 << 20:
                raise DeviceOutOfMemoryError(f"{self.graph.name}: TensorRT ran out of memory on {self.device}")
            raise RuntimeError(f"TensorRT execution failed for {self.graph.name}")
        return {self.graph.output: out}

    def warmup(self) -> None:
        warmup_with_examples(self, self.graph)

    def close(self) -> None:
        # Drop everything that holds GPU memory, context before engine.
        self._context = None
        self._engine = None


def ensure_plan(graph: Graph, cache_dir: Path, precision: str = "fp16") -> tuple[bytes, str]:
    """Export, convert and build as needed; return (plan bytes, cache key)."""
    onnx_path = export_onnx(graph, cache_dir)
    if precision == "fp16":
        fp16_path = onnx_path.with_name(f"{graph.name}.fp16.onnx")
        if not fp16_path.is_file():
            to_fp16(onnx_path, fp16_path)
        onnx_path = fp16_path
    elif precision != "fp32":
        raise BackendUnavailableError(f"unsupported TensorRT precision {precision!r}: use fp16 or fp32")
    onnx_bytes = onnx_path.read_bytes()
    cache = EngineCache(Path(cache_dir) / "engines")
    key = plan_key(onnx_bytes, graph, precision)
    import tensorrt as trt

    gpu = (cuda_device_name() or "gpu").replace("/", "_").replace(" ", "_")
    timing = cache.root / f"timing-{trt.__version__}-{gpu}.cache"  # timing caches are per GPU and version
    plan = cache.get_or_build(
        key,
        lambda: build_plan(onnx_path, graph, timing),
        meta={"graph": graph.name, "shape_profile": graph.shape_profile(), "precision": precision},
    )
    return plan, key


def create(graph: Graph, cache_dir: Path, **options: Any) -> TensorRTEngine:
    precision = str(options.get("precision") or "auto")
    precision = "fp16" if precision == "auto" else precision  # TensorRT's own default: its fp16 kernels
    plan, _ = ensure_plan(graph, cache_dir, precision)
    return TensorRTEngine(graph, plan, precision)
