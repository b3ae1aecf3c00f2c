"""Eager torch, optionally torch.compile: the reference every other backend is checked against."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from engines.base import EngineInfo, warmup_with_examples
from engines.graphs import Graph


def unavailable_reason() -> str | None:
    return None  # torch is a core dependency


class TorchEngine:
    def __init__(self, graph: Graph, *, compile: bool = False, device: str = "cpu") -> None:
        self.graph = graph
        self.device = torch.device(device)
        module = graph.module.to(self.device).eval()
        self._fn = torch.compile(module) if compile else module
        self.info = EngineInfo(
            backend="torch",
            graph=graph.name,
            device=str(self.device),
            precision="fp32",
            providers=("torch.compile",) if compile else ("eager",),
            details={"torch": torch.__version__, "threads": torch.get_num_threads()},
        )

    @torch.inference_mode()
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(_writable(inputs[k])).to(self.device) for k in self.graph.inputs]
        out = self._fn(*args)
        return {self.graph.output: out.float().cpu().numpy()}

    def warmup(self) -> None:
        warmup_with_examples(self, self.graph)

    def close(self) -> None:
        self._fn = None  # type: ignore[assignment]


def _writable(a: np.ndarray) -> np.ndarray:
    """torch.from_numpy shares memory and warns on read-only arrays (cached text states)."""
    a = np.ascontiguousarray(a)
    return a if a.flags.writeable else a.copy()


def create(graph: Graph, cache_dir: Path, **options: object) -> TorchEngine:
    del cache_dir  # eager torch caches nothing
    return TorchEngine(graph, compile=bool(options.get("compile", False)), device=str(options.get("device", "cpu")))
