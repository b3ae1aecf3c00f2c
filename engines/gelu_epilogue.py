"""A feed-forward's GELU in its matmul's epilogue: one cuBLASLt call instead of a matmul and a GELU kernel.

Wan's feed-forward starts with diffusers' ``GELU(approximate="tanh")``: a linear layer, then tanh-GELU as a
separate kernel that reads and writes the whole [tokens, ffn] activation again (3.6 ms of a 50 ms call for
the 1.3B-shaped draft student on an H100, BENCHMARKS.md).  A torch engine on CUDA can swap it for the
module below (``gelu_epilogue``; opt-in until a GPU shows it faster).
"""

from __future__ import annotations

import torch


class GeluEpilogueLinear(torch.nn.Module):
    """A linear layer then tanh-GELU (diffusers' ``GELU(approximate="tanh")``, Wan's feed-forward input) as
    one cuBLASLt matmul with the bias and GELU in its epilogue: the [tokens, ffn] activation is written once
    instead of written, read and written again by a separate GELU kernel.

    ``aten._addmm_activation`` is that call; inductor leaves it as it is (a fallback kernel), and on CUDA
    its GELU is the tanh approximation.  On any other device it computes exact GELU, so there this module
    runs the two steps as diffusers does.
    """

    def __init__(self, proj: torch.nn.Linear) -> None:
        super().__init__()
        self.proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            return torch.nn.functional.gelu(self.proj(x), approximate="tanh")
        rows = x.reshape(-1, x.shape[-1])
        out = torch._addmm_activation(self.proj.bias, rows, self.proj.weight.t(), use_gelu=True)
        return out.view(*x.shape[:-1], out.shape[-1])


def fuse_gelu_epilogues(module: torch.nn.Module) -> int:
    """Swap every tanh-GELU projection inside ``module`` for a :class:`GeluEpilogueLinear` on the same
    weights, in place; how many there are (fused earlier included: graphs may share a module).

    Recognised by shape rather than class, as ``engines.torch_backend.set_attention`` does (engines do not
    import diffusers): a ``proj`` linear layer with a bias, and ``approximate == "tanh"``.
    """
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            proj = getattr(child, "proj", None)
            if isinstance(child, GeluEpilogueLinear):
                count += 1
            elif (getattr(child, "approximate", None) == "tanh" and isinstance(proj, torch.nn.Linear)
                  and proj.bias is not None):
                setattr(parent, name, GeluEpilogueLinear(proj))
                count += 1
    return count
