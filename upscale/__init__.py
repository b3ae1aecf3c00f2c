"""The final half of previz: MoE refinement, video super-resolution, delivery encodes.

Final and VSR packs are already described by ``previz.packs`` (kind "final":
two experts, ``boundary_ratio`` and the Wan VAE; kind "vsr"); the stages that
render them arrive with the final-stage issue.
"""
