"""Torch, eager or compiled, at fp32, bf16 or fp16: the reference, and the GPU runtime that is always there.

On CUDA the defaults are bf16 and ``torch.compile`` (DESIGN.md, measured on an
H200: fp32 5 fps, bf16 28 fps, bf16 compiled 41 fps for the 1.3B student).
On CPU they are fp32 and eager: inductor's CPU code is no faster for these
graphs and a compile costs a CPU user minutes.  Inductor keeps its compiled
kernels under the engine cache (``<cache_dir>/inductor``), so the second start
of a server reuses the first one's work.

``compile_scope="blocks"`` compiles only a transformer's repeated blocks
(regional compilation, diffusers' ``_repeated_blocks``): its 30 layers are one
compiled graph, reused, instead of 30 copies in one graph; what runs around the
blocks (embeddings, the output projection) stays eager.  It is the default on
CUDA: on an H200 the 1.3B-shaped block-causal student ran as fast by blocks as
whole (64.5 against 64.6 fps) and its first compile took 23 s instead of 240 s
(BENCHMARKS.md).  On a CPU, where compiling is opt-in, the whole model is the
default: its calls were quicker there.  CUDA graphs take a whole graph, so a
mode that captures them compiles the model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from engines.base import EngineInfo, warmup_with_examples
from engines.device import checked_device
from engines.errors import BackendUnavailableError, DeviceOutOfMemoryError
from engines.gelu_epilogue import fuse_gelu_epilogues
from engines.graphs import Graph
from engines.precision import cast_module, check_fp8, quantize_fp8, resolve_precision, torch_dtype

# torch.compile modes: "default", or "reduce-overhead" for CUDA graphs (one launch per call,
# worth it where kernel launches dominate: small windows on a fast GPU), or the "max-autotune" ones,
# which time several kernels for each matmul and keep the fastest (a much longer first compile).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# What torch.compile is given: the whole graph, or each of its repeated blocks (see the top).
COMPILE_SCOPES = ("model", "blocks")
# Which kernel computes attention, by the names diffusers' attention dispatcher gives them.  "sdpa" is
# torch's own choice (for bf16 on an H100, torch 2.11: cuDNN's fused kernel, profiled in BENCHMARKS.md);
# the others pin one of torch's fused kernels.  Graphs without a diffusers attention module ignore it.
ATTENTION_KERNELS = {"sdpa": "native", "cudnn": "_native_cudnn", "flash": "_native_flash",
                     "efficient": "_native_efficient", "math": "_native_math"}
CUDA_ONLY_KERNELS = ("cudnn", "efficient")  # torch has no CPU kernel for these
HALF_ONLY_KERNELS = ("cudnn", "flash")  # on CUDA these take bf16 or fp16, not fp32
# Graphs of one kind (a pack's denoiser at one size and precision is one) that a process keeps compiled:
# a long server session changes size and pack more than dynamo's default 8 allows.
COMPILED_SHAPES = 64


def unavailable_reason() -> str | None:
    return None  # torch is a core dependency


class TorchEngine:
    def __init__(self, graph: Graph, *, device: str = "cpu", precision: str | None = None,
                 compile: bool | None = None, compile_mode: str = "default", compile_scope: str | None = None,
                 cache_dir: Path | None = None, attention: str = "sdpa", gelu_epilogue: bool = False) -> None:
        self.graph = graph
        self.device = checked_device(device)
        self.queues_work = self.device.type == "cuda"  # CUDA kernels are queued; a CPU runs them in run()
        self.precision = resolve_precision(precision, self.device.type)
        self.dtype = torch_dtype(self.precision)
        if compile_mode not in COMPILE_MODES:
            raise BackendUnavailableError(f"compile mode {compile_mode!r}: choose one of {', '.join(COMPILE_MODES)}",
                                          field="compile", value=compile_mode)
        if compile_scope is not None and compile_scope not in COMPILE_SCOPES:
            raise BackendUnavailableError(f"compile scope {compile_scope!r}: choose one of {', '.join(COMPILE_SCOPES)}",
                                          field="compile", value=compile_scope)
        self.cuda_graphs = captures_cuda_graphs(compile_mode)
        if compile_scope is None:
            compile_scope = default_compile_scope(self.device, self.cuda_graphs)
        if compile_scope == "blocks" and self.cuda_graphs:
            # A block's outputs would live in its graph's memory, and a block-causal context's recorded keys
            # and values must outlive the next replay.
            raise BackendUnavailableError(f"compile mode {compile_mode!r} captures CUDA graphs, which take a whole "
                                          "graph: compile the model, not its blocks, with it",
                                          field="compile", value=compile_scope)
        if attention not in ATTENTION_KERNELS:
            raise BackendUnavailableError(f"attention {attention!r}: choose one of {', '.join(ATTENTION_KERNELS)}",
                                          field="attention", value=attention)
        if attention in CUDA_ONLY_KERNELS and self.device.type != "cuda":
            raise BackendUnavailableError(f"attention {attention!r} runs on a CUDA GPU only; this engine runs on "
                                          f"{self.device}", field="attention", value=attention)
        if attention in HALF_ONLY_KERNELS and self.device.type == "cuda" and self.dtype == torch.float32:
            raise BackendUnavailableError(f"attention {attention!r} on CUDA takes bf16 or fp16, and this engine "
                                          "runs fp32: use --precision bf16 or another kernel",
                                          field="attention", value=attention)
        if gelu_epilogue and self.device.type != "cuda":
            raise BackendUnavailableError(f"the GELU epilogue is cuBLASLt's, on a CUDA GPU only; this engine runs on "
                                          f"{self.device}", field="gelu_epilogue", value="on")
        if gelu_epilogue and self.precision == "fp8":
            raise BackendUnavailableError("the GELU epilogue is for bf16, fp16 or fp32 matmuls; fp8's feed-forward "
                                          "matmuls are torchao's", field="gelu_epilogue", value="on")
        if self.precision == "fp8":
            check_fp8(self.device)  # before any weight is cast or moved
        self.compiled = self.device.type == "cuda" if compile is None else compile
        self.compile_mode = compile_mode
        # The engine owns graph.module from here: moved and cast in place, no second copy of the weights.
        # Graphs may share weights (a block-causal student's three): each step below is idempotent.
        module = cast_module(graph.module, self.dtype).to(self.device).eval()
        fp8_layers = quantize_fp8(module, self.device) if self.precision == "fp8" else None
        has_attention = set_attention(module, ATTENTION_KERNELS[attention])
        fused_gelus = fuse_gelu_epilogues(module) if gelu_epilogue else 0
        if self.compiled and cache_dir is not None:
            inductor_cache(cache_dir)  # before torch.compile, which fixes inductor's cache directory
        # Static shapes always: dynamo keys compiled code by the graph's Python code, which every engine of a
        # graph kind shares, and would compile a second size (another DraftModel, another student) with
        # symbolic sizes, a slower graph.  Each size gets its own graph, within a raised recompile limit.
        if self.compiled:
            recompile_limit(COMPILED_SHAPES)
        blocks = compile_blocks(module, compile_mode) if self.compiled and compile_scope == "blocks" else 0
        # A graph with no repeated blocks (a decoder) is compiled whole whatever the scope: it is small.
        compile_whole = self.compiled and not blocks
        self._fn: Any = torch.compile(module, mode=compile_mode, dynamic=False) if compile_whole else module
        details: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
        if self.compiled:
            details["compile_mode"] = compile_mode
            details["compile_scope"] = "blocks" if blocks else "model"
        if blocks:
            details["compiled_blocks"] = blocks
        if has_attention:
            details["attention"] = attention
        if fused_gelus:
            details["gelu_epilogue"] = fused_gelus
        if fp8_layers is not None:
            details["fp8_layers"] = fp8_layers
        self.info = EngineInfo(
            backend="torch",
            graph=graph.name,
            device=str(self.device),
            precision=self.precision,
            providers=("torch.compile",) if self.compiled else ("eager",),
            details=details,
        )

    @torch.inference_mode()
    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        args = [self._argument(name, inputs[name]) for name in self.graph.inputs]
        try:
            out = self._fn(*args)
        except torch.OutOfMemoryError as exc:
            raise DeviceOutOfMemoryError(f"{self.graph.name}: out of memory on {self.device}") from exc
        if self.compiled and self.cuda_graphs:
            out = out.clone()  # CUDA graphs reuse their output buffer on the next replay
        return {self.graph.output: out}

    def _argument(self, name: str, value: torch.Tensor) -> torch.Tensor:
        declared = getattr(torch, self.graph.dtype(name))
        if declared.is_floating_point and name not in self.graph.exact:
            declared = self.dtype  # computed at the engine's precision
        value = value.to(self.device, declared, non_blocking=True).contiguous()
        if self.compiled and not value.is_inference():
            # A compiled graph guards on strides and on inference-ness: one kind of input (contiguous,
            # made under inference mode, as run() makes this copy) keeps the warm-up's graph for every
            # take, instead of recompiling in the middle of the first one.
            value = value.clone()
        return value

    def warmup(self) -> None:
        """One run on example inputs; for a compiled engine that run compiles, and its time is recorded."""
        start = time.perf_counter()
        warmup_with_examples(self, self.graph)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if self.compiled and "compile_s" not in self.info.details:
            self.info.details["compile_s"] = round(time.perf_counter() - start, 2)

    def close(self) -> None:
        self._fn = None


def set_attention(module: torch.nn.Module, kernel: str) -> bool:
    """Route every diffusers attention processor inside ``module`` to ``kernel``; whether there is any.

    Set on each processor, ``native`` included, rather than through diffusers'
    ``set_attention_backend``: that setter also changes diffusers' process-wide
    default, which every processor left unset reads at run time, so one engine's
    choice would leak into every other model in the process (the final stage's
    experts, the next engine a benchmark builds).  diffusers' dispatcher takes
    the kernel's name; engines do not import diffusers.
    """
    processors = [getattr(m, "processor", None) for m in module.modules()]
    routable = [p for p in processors if p is not None and hasattr(p, "_attention_backend")]
    for processor in routable:
        processor._attention_backend = kernel
    return bool(routable)


def captures_cuda_graphs(mode: str) -> bool:
    """Whether torch.compile's ``mode`` captures CUDA graphs ("reduce-overhead", and "max-autotune" too)."""
    return bool(torch._inductor.list_mode_options(mode).get("triton.cudagraphs"))


def default_compile_scope(device: torch.device, cuda_graphs: bool) -> str:
    """What torch.compile is given unless the caller says: the repeated blocks on CUDA, the whole model on
    a CPU or where CUDA graphs are captured (see the top)."""
    return "blocks" if device.type == "cuda" and not cuda_graphs else "model"


def compile_blocks(module: torch.nn.Module, mode: str) -> int:
    """Compile, in place, every repeated block inside ``module``: the modules whose class, or a class it
    derives from, a diffusers model names in its ``_repeated_blocks`` (Wan: ``WanTransformerBlock``).  How
    many there are (0: none).

    Each block gets ``torch.compile`` of its own call, and dynamo compiles the blocks' shared code once per
    input shape (and, for a block-causal student, per context mode), guarded, for all of them.  Idempotent:
    graphs that share a transformer (a block-causal student's three) compile its blocks once.  Diffusers'
    ``compile_repeated_blocks`` does the same but matches class names exactly (previz's draft blocks are a
    subclass, ``previz.frame_timesteps``), compiles again when called again, and engines do not import it.
    """
    names = {name for m in module.modules() for name in getattr(m, "_repeated_blocks", None) or ()}
    blocks = [m for m in module.modules() if any(cls.__name__ in names for cls in type(m).__mro__)]
    for block in blocks:
        if getattr(block, "_compiled_call_impl", None) is None:
            block.compile(mode=mode, dynamic=False)
    return len(blocks)


def recompile_limit(entries: int) -> None:
    """Let dynamo keep ``entries`` compiled graphs per graph kind (past its limit of 8 it runs the graph
    eager, with only a warning); only ever raised, since the setting is the process's."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, entries)


def inductor_cache(cache_dir: Path) -> None:
    """Inductor's and Triton's on-disk caches under ours, unless the user has put them elsewhere."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cache_dir) / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(Path(cache_dir) / "inductor" / "triton"))


def create(graph: Graph, cache_dir: Path, **options: Any) -> TorchEngine:
    compile_ = options.get("compile")
    return TorchEngine(graph, device=str(options.get("device") or _default_device()),
                       precision=options.get("precision"), compile=None if compile_ is None else bool(compile_),
                       compile_mode=str(options.get("compile_mode") or "default"),
                       compile_scope=options.get("compile_scope") or None, cache_dir=cache_dir,
                       attention=str(options.get("attention") or "sdpa"),
                       gelu_epilogue=bool(options.get("gelu_epilogue")))


def compute_dtype(**options: Any) -> torch.dtype:
    """The dtype an engine made with ``options`` computes at: what its graph's weights can be loaded at."""
    device = torch.device(str(options.get("device") or _default_device()))
    return torch_dtype(resolve_precision(options.get("precision"), device.type))


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
