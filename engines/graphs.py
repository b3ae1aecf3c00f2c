"""A Graph: one torch module with a fixed I/O contract, the unit every backend runs.

The torch backend runs ``module`` directly; ONNX Runtime and TensorRT run its
ONNX export.  Shapes are static: a draft runs at one size for a whole take, and
static shapes let ONNX Runtime and TensorRT plan their kernels once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: importing torch costs the CLI a second before any error
    import torch


@dataclass(frozen=True)
class Graph:
    name: str  # "denoiser" or "decoder": also the file stem of its exports
    module: torch.nn.Module  # forward(*inputs in `inputs` order) -> one tensor
    inputs: dict[str, tuple[int, ...]]  # float32 inputs, in call order
    output: str
    source_sha256: str  # hash of the weights and config the module was built from
    # An export-only variant of `module` for an opset (same numbers, ONNX-friendlier ops).
    for_export: Callable[[int], torch.nn.Module] | None = field(default=None, compare=False)

    def export_module(self, opset: int) -> torch.nn.Module:
        return self.for_export(opset) if self.for_export else self.module

    @property
    def fingerprint(self) -> str:
        """Everything that changes the exported graph: weights, kind and shapes."""
        blob = json.dumps(
            {"name": self.name, "source": self.source_sha256, "inputs": self.inputs, "output": self.output},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def shape_profile(self) -> str:
        return ";".join(f"{k}={'x'.join(map(str, v))}" for k, v in self.inputs.items())

    def example_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {k: rng.standard_normal(v, dtype=np.float32) for k, v in self.inputs.items()}
