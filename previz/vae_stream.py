"""Streaming Wan VAE decode: latent frames in, one at a time, video frames out, causal cache carried.

The Wan VAE (``AutoencoderKLWan``) decodes causally: each latent frame's 3D
convolutions read a cache of the frames before it, which diffusers keeps in a
list while it loops over a whole clip.  :class:`VAEStream` holds that cache
between calls instead, so latent frames can arrive as they are denoised (a
draft take's chunks, a final job's clip) and frames leave as soon as they
exist.  Large frames are decoded in overlapping spatial tiles, each tile with
its own cache, blended exactly as diffusers' ``tiled_decode`` blends them.

The result equals ``vae.decode`` of the whole clip (tests/test_vae_stream.py),
and memory is flat in clip length.  One stream is one clip: start a new one for
the next clip.

Latents here are in the denoiser's normalised space; the stream maps them back
with the VAE config's ``latents_mean``/``latents_std``, as ``WanPipeline`` does
before it decodes.
"""

from __future__ import annotations

from typing import Any

import torch


def latent_stats(vae: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as [1, C, 1, 1, 1] float32: the denoiser's latents are ``(z - mean) / std``."""
    cfg = vae.config
    mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
    return mean, std


class VAEStream:
    """One clip's decode, fed latent frames in order.

    ``tile`` and ``overlap`` are in latent cells; as in diffusers, only a frame
    larger than one tile is tiled.
    """

    def __init__(self, vae: Any, *, tile: int = 32, overlap: int = 8) -> None:
        if not 0 <= overlap < tile:
            raise ValueError(f"overlap {overlap} must be at least 0 and smaller than the tile {tile}")
        self.vae = vae
        self.tile, self.overlap = tile, overlap
        self.device = next(vae.parameters()).device
        mean, std = latent_stats(vae)
        self.mean, self.std = mean.to(self.device), std.to(self.device)
        self.patch = int(vae.config.patch_size or 1)  # Wan 2.2's VAE folds 2x2 pixels into channels
        # The decoder's own output scale: blending happens there, before the patch is unfolded.
        self.scale = int(vae.spatial_compression_ratio) // self.patch
        self.frames_in = 0
        self._caches: dict[tuple[int, int], list[Any]] = {}
        self._grid: tuple[list[int], list[int], int, int, int, int] | None = None
        self._size: tuple[int, int] | None = None  # the clip's latent (h, w), fixed by its first frame

    def _plan(self, h: int, w: int) -> tuple[list[int], list[int], int, int, int, int]:
        tiled = h > self.tile or w > self.tile  # diffusers' rule: tile only what exceeds one tile
        tile_h, tile_w = (self.tile, self.tile) if tiled else (h, w)
        stride_h, stride_w = (self.tile - self.overlap,) * 2 if tiled else (h, w)
        rows, cols = list(range(0, h, stride_h)), list(range(0, w, stride_w))
        n_conv = self.vae._cached_conv_counts["decoder"]
        self._caches = {(i, j): [None] * n_conv for i in rows for j in cols}
        return rows, cols, tile_h, tile_w, stride_h, stride_w

    @torch.inference_mode()
    def decode(self, latent_frame: torch.Tensor) -> torch.Tensor:
        """One latent frame [1, C, h, w] (or [1, C, 1, h, w]) -> its video frames [n, H, W, 3] float32 in [0, 1].

        The first latent frame of a clip gives one video frame (the causal
        first frame), every later one ``temporal`` frames.
        """
        vae = self.vae
        z = latent_frame if latent_frame.ndim == 5 else latent_frame.unsqueeze(2)
        if z.shape[2] != 1:
            raise ValueError(f"one latent frame at a time, got {z.shape[2]}")
        z = z.to(self.device, torch.float32) * self.std + self.mean
        x = vae.post_quant_conv(z.to(vae.dtype))  # a 1x1x1 conv: no temporal state
        h, w = x.shape[-2:]
        if self._grid is None:
            self._grid, self._size = self._plan(h, w), (h, w)
        elif (h, w) != self._size:
            raise ValueError(f"every latent frame of one clip must be {self._size}, got {(h, w)}")
        rows, cols, tile_h, tile_w, stride_h, stride_w = self._grid
        first = self.frames_in == 0
        decoded: dict[tuple[int, int], torch.Tensor] = {}
        for i in rows:
            for j in cols:
                part = x[:, :, :, i:i + tile_h, j:j + tile_w]
                decoded[(i, j)] = vae.decoder(part, feat_cache=self._caches[(i, j)], feat_idx=[0], first_chunk=first)
        self.frames_in += 1
        scale = self.scale
        blend_h, blend_w = (tile_h - stride_h) * scale, (tile_w - stride_w) * scale
        # Blend each tile into its upper and left neighbours' overlap and keep its stride,
        # exactly as diffusers' tiled_decode does over the whole clip.
        out_rows = []
        for ri, i in enumerate(rows):
            row = []
            for ci, j in enumerate(cols):
                t = decoded[(i, j)]
                if ri > 0:
                    t = vae.blend_v(decoded[(rows[ri - 1], j)], t, blend_h)
                if ci > 0:
                    t = vae.blend_h(decoded[(i, cols[ci - 1])], t, blend_w)
                row.append(t[:, :, :, : stride_h * scale, : stride_w * scale])
            out_rows.append(torch.cat(row, dim=4))
        video = torch.cat(out_rows, dim=3)[:, :, :, : h * scale, : w * scale]
        if self.patch > 1:
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            video = unpatchify(video, patch_size=self.patch)
        video = video.clamp(-1, 1)
        return ((video[0].permute(1, 2, 3, 0).float() + 1) * 0.5).contiguous()  # [n, H, W, 3]
