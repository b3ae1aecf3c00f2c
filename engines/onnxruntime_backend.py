"""ONNX Runtime: TensorRT EP -> CUDA EP -> CPU, with the GPU's presence checked first.

onnxruntime-gpu *lists* the TensorRT and CUDA providers on a machine with no
GPU; asking for them there only produces warnings and a silent CPU fallback.
So we ask for GPU providers only when :func:`cuda_device_name` finds a real GPU,
and report the providers the session actually uses.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import EngineInfo, cuda_device_name, module_installed, warmup_with_examples
from engines.cache import EngineCache, cache_key, sha256_bytes
from engines.export import ORT_OPSET, export_onnx
from engines.graphs import Graph
from previz.errors import BackendUnavailableError


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
        if self._pin_key:
            # The TensorRT EP builds its plans on the first run: run once now and
            # record them, so the next start loads exactly these and nothing else.
            warmup_with_examples(self, graph)
            cache.pin_dir(self._pin_key)
        providers = tuple(self.session.get_providers())
        self.info = EngineInfo(
            backend="onnxruntime",
            graph=graph.name,
            device=gpu if gpu and providers[0] != "CPUExecutionProvider" else "cpu",
            precision="fp16" if providers[0] == "TensorrtExecutionProvider" else "fp32",
            providers=providers,
            details={"onnxruntime": ort.__version__, "onnx": str(onnx_path)},
        )

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: np.ascontiguousarray(inputs[k], dtype=np.float32) for k in self.graph.inputs}
        (out,) = self.session.run([self.graph.output], feed)
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
    path = export_onnx(graph, cache_dir, opset=ORT_OPSET)
    threads = options.get("threads") or _env_threads()
    return OrtEngine(graph, path, cache=EngineCache(Path(cache_dir) / "engines"), threads=threads)
