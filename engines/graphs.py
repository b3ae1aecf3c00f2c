"""A Graph: one torch module with a fixed I/O contract, the unit every backend runs.

The torch backend runs ``module`` directly; ONNX Runtime and TensorRT run its
ONNX export.  Shapes are static: a draft runs at one size for a whole take, and
static shapes let ONNX Runtime and TensorRT plan their kernels once.

Each input is declared with its dtype as well as its shape: the dtype its
callers pass and its ONNX export takes.  An engine that computes at a lower
precision (bf16, fp16) casts floating inputs to it inside the engine, except the
graph's ``exact`` inputs, which stay fp32 all the way in: Wan's timesteps run
0..1000, and bf16 cannot tell 999 from 1000.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: importing torch costs the CLI a second before any error
    import torch


@dataclass(frozen=True)
class Graph:
    name: str  # "denoiser" or "decoder": also the file stem of its exports
    module: torch.nn.Module  # forward(*inputs in `inputs` order) -> one tensor
    inputs: dict[str, tuple[int, ...]]  # shapes, in call order
    output: str
    source_sha256: str  # hash of the weights and config the module was built from
    dtypes: dict[str, str] = field(default_factory=dict)  # input -> torch dtype name; undeclared: float32
    exact: tuple[str, ...] = ()  # inputs kept in fp32 whatever the engine's precision
    # An export-only variant of `module` for an opset (same numbers, ONNX-friendlier ops).
    for_export: Callable[[int], torch.nn.Module] | None = field(default=None, compare=False)
    # Which build of the module's code, where a change of it changes the export (not its numbers): a new
    # revision retires the exports cached under the old one.  Empty: the graph's first.
    revision: str = ""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.dtypes) - set(self.inputs)) + sorted(set(self.exact) - set(self.inputs))
        bad = sorted(k for k, v in self.dtypes.items() if v not in DTYPES)
        if unknown or bad:
            raise ValueError(f"graph {self.name!r}: dtypes/exact name no input {unknown}, or unknown dtypes {bad} "
                             f"(known: {', '.join(DTYPES)})")

    def dtype(self, name: str) -> str:
        """The declared dtype of input ``name``."""
        return self.dtypes.get(name, "float32")

    def export_module(self, opset: int) -> torch.nn.Module:
        return self.for_export(opset) if self.for_export else self.module

    @property
    def fingerprint(self) -> str:
        """Everything that changes the exported graph: weights, kind, shapes and the code's revision."""
        contract: dict[str, object] = {"name": self.name, "source": self.source_sha256, "inputs": self.inputs,
                                       "output": self.output}
        declared = {k: v for k, v in self.dtypes.items() if v != "float32"}
        if declared:  # all-fp32 graphs keep the fingerprint (and the ONNX cache) they always had
            contract["dtypes"] = declared
        if self.revision:  # likewise for graphs at their first revision
            contract["revision"] = self.revision
        blob = json.dumps(contract, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def shape_profile(self) -> str:
        return ";".join(f"{k}={'x'.join(map(str, v))}" for k, v in self.inputs.items())

    def example_inputs(self, seed: int = 0, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Random inputs of the declared shapes and dtypes (normal for floats, small for integers)."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        out: dict[str, torch.Tensor] = {}
        for name, shape in self.inputs.items():
            dtype = getattr(torch, self.dtype(name))
            if dtype.is_floating_point:
                value = torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype)
            else:
                value = torch.randint(0, 8, shape, generator=generator, dtype=dtype)
            out[name] = value.to(device)
        return out


# What a graph input may be declared as (torch dtype names).
DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool")
