"""Tiny random diffusers-format Wan checkpoint directories, as `previz pack import` reads real ones.

Each is a real ``WanPipeline`` of tiny real components (diffusers' own test
configurations: 2 layers, UMT5 with d_model 32) written by ``save_pretrained``,
so the directory has exactly a hub checkpoint's layout: ``model_index.json``
plus ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/`` (and ``transformer_2/`` for A14B).  The tokenizer is built
offline with the ``tokenizers`` library and saved so that
``AutoTokenizer.from_pretrained`` loads it.

Used by the tests (tests/test_pack_import.py) and usable by a tool:
``python -m tests.wan_dirs KIND DIR`` from the repository root.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

KINDS = ("wan2.1", "wan2.2-ti2v", "wan2.2-a14b")
TEXT_DIM = 32
WORDS = ("a red cube on sandy plain blue sky over the sea at dusk camera orbits slowly city street night "
         "forest with tall trees rain falls woman walks dog runs car drives past").split()


def tiny_tokenizer() -> Any:
    """A word-level tokenizer with T5's special tokens, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(WORDS))}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def tiny_text_encoder(vocab_size: int) -> Any:
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=8, relative_attention_max_distance=16)
    return UMT5EncoderModel(config)


def tiny_vae(kind: str) -> Any:
    from diffusers import AutoencoderKLWan

    if kind == "wan2.2-ti2v":  # 48 channels, 4x16x16: the 2x2 patch folded into channels
        return AutoencoderKLWan(base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True,
                                patch_size=2, latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1],
                                num_res_blocks=1, scale_factor_spatial=16, scale_factor_temporal=4,
                                temperal_downsample=[False, True, True])
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def tiny_transformer(channels: int) -> Any:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                 in_channels=channels, out_channels=channels, text_dim=TEXT_DIM, freq_dim=256,
                                 ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                 rope_max_seq_len=32)


def write_wan_dir(root: Path, kind: str = "wan2.1", *, seed: int = 0, vae_kind: str | None = None) -> Path:
    """A tiny random Wan checkpoint directory of ``kind`` at ``root`` (diffusers layout).

    ``vae_kind`` puts another layout's VAE in (a broken checkpoint, for the tests).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline

    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    vae = tiny_vae(vae_kind or kind)
    channels = 48 if kind == "wan2.2-ti2v" else 16
    transformer = tiny_transformer(channels)
    transformer_2 = tiny_transformer(channels) if kind == "wan2.2-a14b" else None
    scheduler: Any = (FlowMatchEulerDiscreteScheduler(shift=7.0) if kind == "wan2.1" else
                      UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0))
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=tiny_text_encoder(len(tokenizer)), vae=vae,
                       scheduler=scheduler, transformer=transformer, transformer_2=transformer_2,
                       boundary_ratio=0.875 if kind == "wan2.2-a14b" else None,
                       expand_timesteps=kind == "wan2.2-ti2v")
    pipe.save_pretrained(root, safe_serialization=True)
    return Path(root)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in KINDS:
        sys.exit(f"usage: python -m tests.wan_dirs {{{','.join(KINDS)}}} DIR")
    print(write_wan_dir(Path(sys.argv[2]), sys.argv[1]))
