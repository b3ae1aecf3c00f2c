"""Train the backlot pack: an autoencoder, then a draft denoiser that follows the blockout control.

Stages, each resumable from the checkpoint in ``--run`` (safetensors plus
``state.json``), so training stops and resumes as often as it must:

1. ``ae``: the frame-group autoencoder (4 RGB frames <-> one 16-channel latent
   frame at 8x), L1 plus an edge loss so object outlines stay crisp; latents
   are lightly noised in training so the decoder forgives a denoiser's errors.
2. ``denoiser``: a ``WanTransformer3DModel`` taking latents + Plücker camera +
   blockout control as channels and MiniLM caption states, trained by flow
   matching on windows exactly as the sampler streams them: a take's first
   window from noise, later windows with a clean context frame at timestep 0.
   ``--context-attention block-causal`` trains the context to attend only to
   itself (the mask ``previz.causal_context`` turns into a cached context at
   draft time); a bidirectional run or pack can be fine-tuned into one.

Clips come from :mod:`previz.backlot` (seeded random scenes and camera moves),
rendered on the training device into a pool that is refreshed as it trains.

    python tools/train_backlot.py --run runs/backlot --ae-minutes 20 --denoiser-minutes 120
    python tools/train_backlot.py --run runs/backlot --denoiser-minutes 60      # resumes
    python tools/train_backlot.py --run runs/backlot --export previz/packs_builtin/previz-backlot
    python tools/train_backlot.py --run runs/next --from-pack previz/packs_builtin/previz-backlot --denoiser-minutes 60

``--device cuda`` trains on a GPU (bf16 autocast); a few minutes there see as
many clips as hours of two CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from previz.atomic import atomic_path, atomic_write
from previz.backlot import random_shot, render_shot
from previz.causal_context import block_causal_mask, install
from previz.pack_builder import (
    BACKLOT_CONTROL_SCALE,
    BACKLOT_DECODER_CHANNELS,
    BACKLOT_DRAFT,
    BACKLOT_LATENT,
    BACKLOT_PACK_ID,
    BACKLOT_TEXT_TOKENS,
    BACKLOT_TRANSFORMER,
    MINILM_PACKAGE,
    MINILM_SUBFOLDER,
    new_autoencoder,
    new_denoiser,
    save_draft_pack,
)
from previz.packs import DraftDefaults, LatentLayout, _package_dir
from previz.sampler import NUM_TRAIN_TIMESTEPS

STAGES = ("ae", "decoder", "denoiser")


@dataclass
class Config:
    latent: LatentLayout = BACKLOT_LATENT
    draft: DraftDefaults = BACKLOT_DRAFT
    transformer: dict[str, Any] = field(default_factory=lambda: dict(BACKLOT_TRANSFORMER))
    decoder_channels: int = BACKLOT_DECODER_CHANNELS
    control_scale: int = BACKLOT_CONTROL_SCALE
    text_tokens: int = BACKLOT_TEXT_TOKENS
    pool: int = 512  # clips held rendered at once
    refresh: float = 4  # clips re-rendered per step (below 1: one every 1/refresh steps)
    ae_batch: int = 16  # latent frames (4 video frames each) per autoencoder step
    ae_lr: float = 1e-3
    ae_latent_noise: float = 0.1
    ae_temporal: float = 1.0  # weight of the loss on frame-to-frame change (a still shot must decode still)
    batch: int = 16  # windows per denoiser step
    lr: float = 4e-4
    warmup: int = 200
    ema: float = 0.999
    shift: float = 5.0  # where training puts its noise levels: as the sampler's shifted schedule
    text_dropout: float = 0.25  # captions are blank this often (the control alone must carry the shot)
    context_attention: str = "bidirectional"  # or "block-causal" (previz.causal_context)

    @property
    def width(self) -> int:
        return self.draft.width

    @property
    def height(self) -> int:
        return self.draft.height


def tiny_config() -> Config:
    """Seconds-sized models and clips, for tests and smoke runs."""
    draft = dataclasses.replace(BACKLOT_DRAFT, width=64, height=32, window_frames=3)
    return Config(draft=draft, transformer=dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
                                                freq_dim=32, ffn_dim=64, num_layers=2),
                  decoder_channels=8, text_tokens=16, pool=8, refresh=2, ae_batch=4, batch=4, warmup=5)


# ----------------------------------------------------------------------------- text


class Captions:
    """Caption -> MiniLM states [tokens, 384], exactly as previz.text.TextEncoder makes them at fp32, batched."""

    def __init__(self, directory: Path, tokens: int, device: torch.device) -> None:
        from transformers import AutoTokenizer, BertModel

        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        # .float(): a half-precision copy (what travels to a GPU machine) computes in fp32 like the product's.
        self.model = BertModel.from_pretrained(directory, use_safetensors=True, local_files_only=True
                                               ).float().to(device).eval()
        self.tokens, self.device = tokens, device
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = sorted({c for c in captions if c not in self.cache})
        if missing:
            batch = self.tokenizer(missing, padding="max_length", max_length=self.tokens, truncation=True,
                                   return_tensors="pt").to(self.device)
            mask = batch["attention_mask"]
            out = self.model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
            out = (out * mask.unsqueeze(-1).to(out.dtype)).float()
            for caption, states in zip(missing, out, strict=True):
                self.cache[caption] = states
            if len(self.cache) > 20000:
                self.cache.clear()
        return torch.stack([self.cache[c] for c in captions])


# ----------------------------------------------------------------------------- the clip pool


class Pool:
    """Rendered clips held on the training device; a few are replaced by fresh ones every step."""

    def __init__(self, cfg: Config, captions: Captions, device: torch.device, first_seed: int) -> None:
        self.cfg, self.captions, self.device = cfg, captions, device
        self.next_seed = first_seed
        self.rendered = 0
        n, window, t = cfg.pool, cfg.draft.window_frames, cfg.latent.temporal
        self.frames = torch.zeros(n, window * t, cfg.height, cfg.width, 3, dtype=torch.uint8, device=device)
        self.control: torch.Tensor | None = None
        self.camera: torch.Tensor | None = None
        self.text = torch.zeros(n, cfg.text_tokens, 384, device=device)
        self.context = torch.zeros(n, dtype=torch.long, device=device)
        self.slot = 0
        self.owed = 0.0  # fractional refreshes carried to the next step
        self.fill(n)

    def refresh(self, count: float) -> None:
        self.owed += count
        whole = int(self.owed)
        if whole:
            self.owed -= whole
            self.fill(whole)

    def fill(self, count: int) -> None:
        cfg = self.cfg
        shots, tensors = [], []
        for _ in range(count):
            shot = random_shot(self.next_seed, window=cfg.draft.window_frames, context=cfg.draft.context_frames,
                               temporal=cfg.latent.temporal, fps=cfg.draft.fps)
            self.next_seed += 1
            shots.append(shot)
            tensors.append(render_shot(shot, layout=cfg.latent, window=cfg.draft.window_frames, fps=cfg.draft.fps,
                                       width=cfg.width, height=cfg.height, control_scale=cfg.control_scale,
                                       device=self.device))
        text = self.captions([s.caption for s in shots])
        for shot, st, states in zip(shots, tensors, text, strict=True):
            i = self.slot
            if self.control is None:
                self.control = torch.zeros(cfg.pool, *st.control.shape, dtype=torch.float16, device=self.device)
                self.camera = torch.zeros(cfg.pool, *st.camera.shape, dtype=torch.float16, device=self.device)
            assert self.camera is not None
            self.frames[i] = (st.frames * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)
            self.control[i] = st.control.half()
            self.camera[i] = st.camera.half()
            self.text[i] = states
            self.context[i] = shot.context
            self.slot = (self.slot + 1) % cfg.pool
        self.rendered += count

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.cfg.pool, (batch,), generator=generator, device="cpu").to(self.device)


def to_groups(frames: torch.Tensor, temporal: int) -> torch.Tensor:
    """[B, F*T, H, W, 3] uint8 -> [B*F, 3*T, H, W] in [-1, 1], channel = frame * 3 + rgb (the decoder's order)."""
    b, n, h, w, _ = frames.shape
    x = frames.float().div(127.5).sub(1.0).reshape(b * (n // temporal), temporal, h, w, 3)
    return x.permute(0, 1, 4, 2, 3).reshape(b * (n // temporal), 3 * temporal, h, w)


def edge_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between image gradients: blur costs here even where plain L1 forgives it."""
    def grads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]
    (py, px), (ty, tx) = grads(pred), grads(target)
    return (py - ty).abs().mean() + (px - tx).abs().mean()


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    ema: torch.nn.Module | None) -> None:
    """Model, EMA and Adam moments in one safetensors file (moments in bf16: half the size, resumes fine)."""
    tensors = {f"model.{k}": v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().float().cpu().contiguous() for k, v in ema.state_dict().items()})
    for i, state in opt.state_dict()["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            if name in state:
                tensors[f"opt.{i}.{name}"] = state[name].detach().to(torch.bfloat16).cpu().contiguous()
    with atomic_path(path) as tmp:  # a run killed mid-save keeps its last whole checkpoint
        save_file(tensors, str(tmp))


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, ema: torch.nn.Module | None,
                    step: int) -> None:
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None and any(k.startswith("ema.") for k in tensors):
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    device = next(model.parameters()).device
    state = opt.state_dict()
    for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
        if f"opt.{i}.exp_avg" in tensors:
            state["state"][i] = {"step": torch.tensor(float(step)),
                                 "exp_avg": tensors[f"opt.{i}.exp_avg"].to(device, p.dtype),
                                 "exp_avg_sq": tensors[f"opt.{i}.exp_avg_sq"].to(device, p.dtype)}
    opt.load_state_dict(state)


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=2).encode())


# ----------------------------------------------------------------------------- training


class Trainer:
    def __init__(self, run: Path, cfg: Config, device: torch.device, *, text_dir: Path | None = None,
                 seed: int = 0, log: Any = print) -> None:
        self.run, self.cfg, self.device, self.log = run, cfg, device, log
        run.mkdir(parents=True, exist_ok=True)
        self.state_path = run / "state.json"
        self.state: dict[str, Any] = json.loads(self.state_path.read_text()) if self.state_path.exists() else {
            "config": {"width": cfg.width, "height": cfg.height, "transformer": cfg.transformer,
                       "decoder_channels": cfg.decoder_channels, "control_scale": cfg.control_scale},
            "next_seed": seed * 1_000_000,
            "ae": {"steps": 0, "clips_seen": 0, "seconds": {}},
            "decoder": {"steps": 0, "clips_seen": 0, "seconds": {}},
            "denoiser": {"steps": 0, "clips_seen": 0, "seconds": {}},
            "scaling_factor": None,
        }
        self.captions = Captions(text_dir or _package_dir(MINILM_PACKAGE) / MINILM_SUBFOLDER, cfg.text_tokens, device)
        self.state.setdefault("decoder", {"steps": 0, "clips_seen": 0, "seconds": {}})
        self.generator = torch.Generator().manual_seed(seed + sum(self.state[s]["steps"] for s in STAGES))
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
        torch.manual_seed(seed)
        self.ae = new_autoencoder(cfg.latent, cfg.decoder_channels).to(device)
        self.ae_opt = torch.optim.AdamW(self.ae.parameters(), lr=cfg.ae_lr, weight_decay=0.0)
        if (run / "ae.safetensors").exists():
            load_checkpoint(run / "ae.safetensors", self.ae, self.ae_opt, None, self.state["ae"]["steps"])
        self.denoiser = self._new_denoiser().to(device)
        # A block-causal student trains under the mask that its cached context reproduces at draft time.
        self.slot = install(self.denoiser) if cfg.context_attention == "block-causal" else None
        before = self.state["config"].get("context_attention", "bidirectional")
        if before != cfg.context_attention:  # a fine-tune from one kind of student into the other
            log(f"context attention: {before} -> {cfg.context_attention} from denoiser step "
                f"{self.state['denoiser']['steps']}")
        self.state["config"]["context_attention"] = cfg.context_attention
        self.ema = self._new_denoiser().to(device)
        self.ema.load_state_dict(self.denoiser.state_dict())
        self.ema.requires_grad_(False)
        self.opt = torch.optim.AdamW(self.denoiser.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.99))
        if (run / "denoiser.safetensors").exists():
            load_checkpoint(run / "denoiser.safetensors", self.denoiser, self.opt, self.ema,
                            self.state["denoiser"]["steps"])
        self.pool: Pool | None = None

    def start_from_pack(self, root: Path) -> None:
        """Begin a fresh run from a trained pack: its EMA denoiser (as both the trained and the EMA
        weights), its autoencoder and latent scale, its step and clip counts.  Adam's moments start
        afresh (the warm-up covers that), so a pack in git is all a later session needs to go on."""
        from previz.packs import load_component, load_pack

        pack = load_pack(str(root))
        denoiser = load_component(pack, "denoiser").state_dict()
        self.denoiser.load_state_dict(denoiser)
        self.ema.load_state_dict(denoiser)
        ae = load_component(pack, "decoder")
        self.ae.load_state_dict(ae.state_dict())
        self.state["scaling_factor"] = float(ae.config.scaling_factor)
        for stage, record in pack.training.items():
            if stage in STAGES:
                self.state[stage]["steps"] = int(record["steps"])
                self.state[stage]["clips_seen"] = int(record["clips_seen"])
                self.state[stage]["seconds"] = {k: float(v) * 3600 for k, v in record["device_hours"].items()}
        self.state["next_seed"] = max(self.state["next_seed"], int(pack.training.get("next_seed", 0)))
        self.save()

    def _new_denoiser(self) -> Any:
        return new_denoiser(self.cfg.latent, self.cfg.transformer, camera=True, control_scale=self.cfg.control_scale)

    def _pool(self) -> Pool:
        if self.pool is None:
            start = time.perf_counter()
            self.pool = Pool(self.cfg, self.captions, self.device, self.state["next_seed"])
            self.log(f"rendered a pool of {self.cfg.pool} clips in {time.perf_counter() - start:.1f} s")
        return self.pool

    def _ctx(self) -> Any:
        return self.autocast if self.autocast is not None else torch.autocast("cpu", enabled=False)

    def _account(self, stage: str, seconds: float, clips: int) -> None:
        record = self.state[stage]
        cuda = self.device.type == "cuda"
        kind = torch.cuda.get_device_name(self.device) if cuda else f"cpu x{torch.get_num_threads()}"
        record["seconds"][kind] = record["seconds"].get(kind, 0.0) + seconds
        record["clips_seen"] += clips
        if self.pool is not None:
            self.state["next_seed"] = self.pool.next_seed

    def save(self) -> None:
        save_checkpoint(self.run / "ae.safetensors", self.ae, self.ae_opt, None)
        save_checkpoint(self.run / "denoiser.safetensors", self.denoiser, self.opt, self.ema)
        write_json(self.state_path, self.state)

    # -- stage 1

    def ae_step(self, stage: str = "ae") -> float:
        """One autoencoder step; stage "decoder" keeps the encoder (so the latent space) fixed."""
        cfg, pool = self.cfg, self._pool()
        idx = pool.sample(cfg.ae_batch, self.generator)
        frames = pool.frames[idx]  # [B, F*T, H, W, 3]
        x = to_groups(frames, cfg.latent.temporal)
        pick = torch.randperm(x.shape[0], generator=self.generator)[: cfg.ae_batch].to(self.device)
        x = x[pick]
        with self._ctx():
            with torch.set_grad_enabled(stage == "ae"):
                z = self.ae.encoder(x)
            z = z + cfg.ae_latent_noise * torch.randn_like(z)
            y = self.ae.decoder(z)
        y = y.float()
        loss = (y - x).abs().mean() + edge_loss(y, x) + 1e-4 * z.float().pow(2).mean()
        if cfg.ae_temporal:  # the 4 frames of a latent frame change as the truth does, no more
            t = cfg.latent.temporal
            yf, xf = y.unflatten(1, (t, 3)), x.unflatten(1, (t, 3))
            loss = loss + cfg.ae_temporal * ((yf[:, 1:] - yf[:, :-1]) - (xf[:, 1:] - xf[:, :-1])).abs().mean()
        self.ae_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.ae.parameters(), 1.0)
        self.ae_opt.step()  # encoder parameters without gradients stay as they are
        self.state[stage]["steps"] += 1
        pool.refresh(cfg.refresh)
        return float(loss.detach())

    @torch.no_grad()
    def measure_scaling(self) -> float:
        """1 / std of the encoder's latents: what makes them unit-variance for the sampler."""
        pool = self._pool()
        x = to_groups(pool.frames[: min(64, self.cfg.pool)], self.cfg.latent.temporal)
        z = torch.cat([self.ae.encoder(c).float() for c in x.split(32)])
        return float(1.0 / z.std().clamp_min(1e-6))

    # -- stage 2

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, F*T, H, W, 3] uint8 -> [B, C, F, h, w] scaled latents."""
        b = frames.shape[0]
        with self._ctx():
            z = self.ae.encoder(to_groups(frames, self.cfg.latent.temporal)).float()
        z = z * float(self.state["scaling_factor"])
        return z.reshape(b, -1, *z.shape[1:]).permute(0, 2, 1, 3, 4)

    def denoiser_step(self) -> float:
        cfg, pool = self.cfg, self._pool()
        assert pool.control is not None and pool.camera is not None
        idx = pool.sample(cfg.batch, self.generator)
        x0 = self.encode(pool.frames[idx])
        b, _, f, h, w = x0.shape
        noise = torch.randn(x0.shape, generator=self.generator).to(self.device)
        u = torch.rand(b, generator=self.generator).to(self.device)
        sigma = cfg.shift * u / (1.0 + (cfg.shift - 1.0) * u)  # the sampler's shifted schedule, densest near 1
        pure = torch.rand(b, generator=self.generator).to(self.device) < 0.1  # the first step starts at pure noise
        sigma = torch.where(pure, torch.ones_like(sigma), sigma)
        ctx = pool.context[idx]
        frame_ids = torch.arange(f, device=self.device)[None]
        is_context = frame_ids < ctx[:, None]  # [B, F]
        levels = torch.where(is_context, 0.0, sigma[:, None])  # per-frame noise level
        s = levels[:, None, :, None, None]
        xt = (1.0 - s) * x0 + s * noise
        _, p_h, p_w = cfg.transformer["patch_size"]
        tokens = (h // p_h) * (w // p_w)
        timesteps = (levels * NUM_TRAIN_TIMESTEPS).repeat_interleave(tokens, dim=1)
        camera = pool.camera[idx].float().permute(0, 2, 1, 3, 4)
        control = pool.control[idx].float().permute(0, 2, 1, 3, 4)
        text = pool.text[idx]
        drop = torch.rand(b, generator=self.generator).to(self.device) < cfg.text_dropout
        text = torch.where(drop[:, None, None], self.captions([""]).expand_as(text), text)
        if self.slot is not None:
            self.slot.use("masked", mask=block_causal_mask(ctx, f, tokens))
        with self._ctx():
            v = self.denoiser(torch.cat([xt, camera, control], 1), timesteps, text, return_dict=False)[0]
        if self.slot is not None:
            self.slot.use("full")  # autograd keeps the mask it needs
        mask = (~is_context).float()[:, None, :, None, None]
        loss = ((v.float() - (noise - x0)) ** 2 * mask).sum() / (mask.sum() * x0.shape[1] * h * w)
        step = self.state["denoiser"]["steps"]
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.denoiser.parameters(), 1.0)
        self.opt.step()
        with torch.no_grad():
            decay = min(cfg.ema, (1 + step) / (10 + step))
            for pe, p in zip(self.ema.parameters(), self.denoiser.parameters(), strict=True):
                pe.lerp_(p.detach(), 1.0 - decay)
        self.state["denoiser"]["steps"] += 1
        pool.refresh(cfg.refresh)
        return float(loss.detach())

    def train(self, stage: str, *, minutes: float | None = None, steps: int | None = None,
              save_every_min: float = 10.0, log_every: int = 50) -> list[float]:
        """Run one stage for a time or step budget, checkpointing as it goes; returns the losses."""
        if stage == "denoiser" and self.state["scaling_factor"] is None:
            self.state["scaling_factor"] = self.measure_scaling()
            self.log(f"latent scaling factor {self.state['scaling_factor']:.4f}")
        if stage == "decoder" and self.state["scaling_factor"] is None:
            raise SystemExit("train the autoencoder first: the decoder stage fine-tunes its decoder")
        step_fn = self.denoiser_step if stage == "denoiser" else (lambda: self.ae_step(stage))
        batch = self.cfg.batch if stage == "denoiser" else self.cfg.ae_batch
        self._pool()
        losses: list[float] = []
        start = last_save = last_log = time.perf_counter()
        accounted = start
        while True:
            now = time.perf_counter()
            if (minutes is not None and now - start >= minutes * 60) or (steps is not None and len(losses) >= steps):
                break
            losses.append(step_fn())
            if len(losses) % log_every == 0:
                recent = losses[-log_every:]
                rate = log_every / (time.perf_counter() - last_log)
                last_log = time.perf_counter()
                self.log(f"{stage} step {self.state[stage]['steps']}: loss {sum(recent) / len(recent):.4f} "
                         f"({rate:.1f} steps/s, {rate * batch:.0f} clips/s)")
            if time.perf_counter() - last_save >= save_every_min * 60:
                self._account(stage, time.perf_counter() - accounted, 0)
                accounted = last_save = time.perf_counter()
                self.save()
        self._account(stage, time.perf_counter() - accounted, 0)
        self.state[stage]["clips_seen"] += len(losses) * batch
        if stage == "ae":
            self.state["scaling_factor"] = self.measure_scaling()
        self.save()
        return losses

    def export(self, root: Path) -> None:
        """The EMA denoiser and the autoencoder as a trained previz pack."""
        if self.state["scaling_factor"] is None:
            raise SystemExit("train the autoencoder first: no latent scaling factor yet")
        ae = new_autoencoder(self.cfg.latent, self.cfg.decoder_channels)
        ae.load_state_dict({k: v.cpu() for k, v in self.ae.state_dict().items()})
        ae.register_to_config(scaling_factor=float(self.state["scaling_factor"]))
        denoiser = self._new_denoiser()
        denoiser.load_state_dict({k: v.cpu() for k, v in self.ema.state_dict().items()})
        record: dict[str, Any] = {
            stage: {"steps": self.state[stage]["steps"], "clips_seen": self.state[stage]["clips_seen"],
                    "device_hours": {k: round(v / 3600, 4) for k, v in self.state[stage]["seconds"].items()}}
            for stage in STAGES}
        record["next_seed"] = self.state["next_seed"]  # a run started from this pack draws new clips
        save_draft_pack(root, pack_id=BACKLOT_PACK_ID, latent=self.cfg.latent, draft=self.cfg.draft,
                        denoiser=denoiser.eval(), decoder=ae.eval(), text_tokens=self.cfg.text_tokens, camera=True,
                        control_scale=self.cfg.control_scale, trained=True,
                        context_attention=self.cfg.context_attention,
                        description="Trained by previz on procedurally rendered blockout scenes "
                                    "(tools/train_backlot.py): follows the scene blockout and camera; "
                                    "looks like a lit grey-box previz.",
                        extra=record)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="checkpoint directory (resumed if it exists)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ae-minutes", type=float, default=0.0)
    parser.add_argument("--decoder-minutes", type=float, default=0.0,
                        help="fine-tune the decoder alone (the latent space, and so the denoiser, stay valid)")
    parser.add_argument("--denoiser-minutes", type=float, default=0.0)
    parser.add_argument("--ae-steps", type=int, default=None)
    parser.add_argument("--denoiser-steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None, help="denoiser windows per step")
    parser.add_argument("--ae-batch", type=int, default=None)
    parser.add_argument("--pool", type=int, default=None)
    parser.add_argument("--refresh", type=float, default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="seconds-sized models and clips (smoke test)")
    parser.add_argument("--text-dir", type=Path, default=None, help="MiniLM directory (default: the installed one)")
    parser.add_argument("--save-every", type=float, default=10.0, help="minutes between checkpoints")
    parser.add_argument("--export", type=Path, default=None, help="write the trained pack here when done")
    parser.add_argument("--from-pack", type=Path, default=None,
                        help="start a new --run from a trained pack (e.g. previz/packs_builtin/previz-backlot)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--context-attention", choices=("bidirectional", "block-causal"), default=None,
                        help="how a window's context frames attend (default: the run's or the --from-pack pack's, "
                             "else bidirectional); "
                             "block-causal lets a draft compute the context once per window")
    args = parser.parse_args(argv)

    cfg = tiny_config() if args.tiny else Config()
    state_path = args.run / "state.json"
    # The kind of student: as asked, else as the run (or the pack it starts from) was trained.
    recorded = json.loads(state_path.read_text())["config"].get("context_attention") if state_path.exists() else None
    if recorded is None and args.from_pack is not None:
        from previz.packs import load_pack

        context = load_pack(str(args.from_pack)).conditioning.context
        recorded = context.attention if context is not None else None
    cfg.context_attention = args.context_attention or recorded or cfg.context_attention
    for name in ("batch", "ae_batch", "pool", "refresh"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.from_pack and (args.run / "state.json").exists():
        raise SystemExit(f"{args.run} already holds a run: resume it, or start from the pack in a new directory")
    trainer = Trainer(args.run, cfg, device, text_dir=args.text_dir, seed=args.seed,
                      log=lambda m: print(m, flush=True))
    if args.from_pack:
        trainer.start_from_pack(args.from_pack)
    if args.ae_minutes or args.ae_steps:
        trainer.train("ae", minutes=args.ae_minutes or None, steps=args.ae_steps, save_every_min=args.save_every)
    if args.decoder_minutes:
        trainer.train("decoder", minutes=args.decoder_minutes, save_every_min=args.save_every)
    if args.denoiser_minutes or args.denoiser_steps:
        trainer.train("denoiser", minutes=args.denoiser_minutes or None, steps=args.denoiser_steps,
                      save_every_min=args.save_every)
    if args.export:
        trainer.export(args.export)
        print(f"wrote the trained pack to {args.export}")
    print(json.dumps({k: trainer.state[k] for k in (*STAGES, "scaling_factor")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
