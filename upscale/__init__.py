"""The final half of previz: an approved draft to a 4K deliverable.

final_pack  the embedded (untrained) final pack: two Wan experts, a Wan VAE, a text encoder
refine      MoE refinement (latent or pixel handoff, experts by timestep) and the streaming tiled decode
vsr         tiled, overlap-blended upscaling to the delivery size (Lanczos until a trained VSR pack)
encode      PyAV delivery formats, colour tags, timecode, metadata, segments joined by remux
jobs        resumable jobs: refine checkpoints and delivery segments as units in the draft store
"""
