"""The draft path's decoder seam: latent frames of one take in, in order, video frames out.

Two implementations:

- :class:`EngineFrameDecoder`: a frame-wise decoder graph (the embedded packs'
  ``AutoencoderTiny``) on any engine.  Stateless: each latent frame decodes
  alone, into ``temporal`` frames.
- :class:`VAEFrameDecoder`: a pack's own Wan VAE (imported checkpoints),
  streamed by :class:`previz.vae_stream.VAEStream` with its causal cache
  carried from chunk to chunk, so a take still leaves frame by frame as it is
  denoised.  Torch only, whichever backend runs the denoiser: the Wan VAE's
  cached 3D convolutions do not export to one static graph.

A take opens one :class:`FrameStream` per take (``decoder.open()``); the
stream's ``decode`` returns exactly the video frames that latent frame holds.
Both take and return torch tensors on the decoder's device (the Engine seam's
rule): the take converts the frames to uint8 there and copies them out once.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from engines import Engine, EngineInfo
from previz.packs import LatentLayout, Pack, load_component
from previz.vae_stream import VAEStream


class FrameStream(Protocol):
    def decode(self, latent_frame: torch.Tensor) -> torch.Tensor:
        """One latent frame [1, C, h, w] -> its video frames [n, H, W, 3] in [0, 1], on the decoder's device."""
        ...


class FrameDecoder(Protocol):
    info: EngineInfo

    def open(self, first_latent: int = 0, previous: torch.Tensor | None = None) -> FrameStream:
        """A stream for one take, starting at latent frame ``first_latent``.

        ``previous`` holds the latent frames just before it [1, C, n, h, w],
        when a take resumes mid-way: a stateful decoder warms its cache on them.
        """
        ...

    def warmup(self) -> None: ...

    def close(self) -> None: ...


class _EngineStream:
    def __init__(self, engine: Engine, layout: LatentLayout, first_latent: int) -> None:
        self.engine, self.layout, self.index = engine, layout, first_latent

    def decode(self, latent_frame: torch.Tensor) -> torch.Tensor:
        images = self.engine.run({"latents": latent_frame})["frames"]
        if self.layout.causal_first_frame and self.index == 0:
            images = images[-1:]  # the first causal latent frame holds one video frame
        self.index += 1
        return images


class EngineFrameDecoder:
    """A frame-wise decoder graph on an engine (stateless between latent frames)."""

    def __init__(self, engine: Engine, layout: LatentLayout) -> None:
        self.engine, self.layout = engine, layout
        self.info = engine.info

    def open(self, first_latent: int = 0, previous: torch.Tensor | None = None) -> FrameStream:
        return _EngineStream(self.engine, self.layout, first_latent)

    def warmup(self) -> None:
        self.engine.warmup()

    def close(self) -> None:
        self.engine.close()


class _VAEStream:
    def __init__(self, stream: VAEStream) -> None:
        self.stream = stream

    def decode(self, latent_frame: torch.Tensor) -> torch.Tensor:
        return self.stream.decode(latent_frame)


class VAEFrameDecoder:
    """A pack's Wan VAE, streamed: one causal cache per take, carried across its chunks."""

    def __init__(self, pack: Pack, *, tile: int = 32, overlap: int = 8, device: torch.device | str = "cpu") -> None:
        # On the denoiser's device, so the latents never leave it; fp32, as diffusers' Wan pipelines decode.
        self.vae: Any = load_component(pack, "decoder").to(device)
        self.tile, self.overlap = tile, overlap
        self.info = EngineInfo(backend="torch", graph="decoder", device=str(device), precision="fp32",
                               providers=("torch",), details={"decoder": "streaming Wan VAE (previz.vae_stream)"})

    def open(self, first_latent: int = 0, previous: torch.Tensor | None = None) -> FrameStream:
        stream = VAEStream(self.vae, tile=self.tile, overlap=self.overlap)
        if first_latent > 0 and previous is not None:
            # Resuming mid-take: the cache is rebuilt from the frames before, whose pictures were sent already.
            # Close to, not exactly, an uninterrupted take's: that cache has seen the whole clip so far.
            for k in range(previous.shape[2]):
                stream.decode(previous[:, :, k])
        return _VAEStream(stream)

    def warmup(self) -> None:
        return None

    def close(self) -> None:
        return None


def streams_with_vae(pack: Pack) -> bool:
    """Whether the pack's draft decoder is its Wan VAE (an imported checkpoint) rather than a frame-wise graph."""
    return pack.component("decoder").cls == "AutoencoderKLWan"
