"""The text encoder's cost, fp32 against bf16: host peak memory, load time and encode time per prompt.

A random ``UMT5EncoderModel`` of a chosen shape (default UMT5-base: d_model 768,
12 layers, d_ff 2048, 12 heads, vocabulary 256384; ``--shape xxl`` is Wan's
UMT5-XXL, 5.7B parameters, 11 GB on disk) is written with ``save_pretrained``
in bf16, as Wan checkpoints store it, beside a word-level tokenizer, then loaded
through ``previz.text.TextEncoder`` exactly as an imported Wan pack's is.  Each
precision runs in a process of its own, so each peak RSS is that precision's
alone.  Random weights: cost only; the bf16 states are compared with the fp32
ones for scale, not for quality.

    PYTHONPATH=. python tools/bench_text.py                  # CPU, UMT5-base shape, 512 tokens
    PYTHONPATH=. python tools/bench_text.py --device cuda --shape xxl
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from machine import cpu_model

SHAPES = {  # UMT5EncoderModel configs: google/umt5-base, and the UMT5-XXL encoder Wan uses
    "base": dict(d_model=768, num_layers=12, d_ff=2048, num_heads=12, d_kv=64),
    "xxl": dict(d_model=4096, num_layers=24, d_ff=10240, num_heads=64, d_kv=64),
}
VOCAB = 256384
WORDS = ("a red cube on sandy plain blue sky over the sea at dusk camera orbits slowly city street night forest "
         "with tall trees rain falls woman walks dog runs car drives past lighthouse in gale waves crash").split()


def write_encoder(directory: Path, shape: str) -> int:
    """The random encoder (bf16 on disk) and a tokenizer, as a Wan checkpoint's text_encoder/ and tokenizer/."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=VOCAB, feed_forward_proj="gated-gelu", **SHAPES[shape])
    with torch.device("meta"):  # no fp32 copy in this process either: allocated at bf16, then filled
        model = UMT5EncoderModel(config).to(torch.bfloat16)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.05, generator=generator)
    model.encoder.embed_tokens = model.shared  # to_empty untied them; a checkpoint stores them once
    model.save_pretrained(directory / "text_encoder", safe_serialization=True)
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(WORDS))}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=512).save_pretrained(directory / "tokenizer")
    return sum(p.numel() for p in model.parameters())


def encoder_pack(directory: Path, dim: int, tokens: int) -> Any:
    """The text half of an imported Wan pack, pointing at ``directory``: all TextEncoder reads."""
    from previz.packs import Component, Conditioning, LatentLayout, Pack, TextConditioning

    component = Component(name="text_encoder", cls="UMT5EncoderModel", subfolder="text_encoder", sha256={},
                          tokenizer_subfolder="tokenizer")
    return Pack(id="bench-text", kind="draft", root=directory, trained=False, label="bench",
                latent=LatentLayout(space="bench", channels=16, temporal=4, spatial=8),
                components={"text_encoder": component}, weights=directory,
                conditioning=Conditioning(text=TextConditioning(encoder="UMT5EncoderModel", dim=dim, tokens=tokens)))


def peak_rss_gib() -> float:
    """This process's peak resident set so far.  VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child
    would start from its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # not Linux: the best there is


def measure(directory: Path, precision: str, device: str, dim: int, tokens: int, prompts: int) -> dict[str, Any]:
    """One precision, in this process: load, one warm encode, then ``prompts`` distinct prompts (cache misses)."""
    import previz.text

    idle = peak_rss_gib()
    start = time.perf_counter()
    encoder = previz.text.TextEncoder(encoder_pack(directory, dim, tokens), device=device, precision=precision)
    load_s = time.perf_counter() - start
    loaded = peak_rss_gib()
    encoder("warm up")  # one-off kernel selection and allocation, paid by DraftModel.warmup
    times, states = [], []
    for i in range(prompts):
        prompt = " ".join(WORDS[i: i + 8])
        start = time.perf_counter()
        out = encoder(prompt)
        if out.device.type == "cuda":
            torch.cuda.synchronize(out.device)
        times.append(time.perf_counter() - start)
        states.append(out.cpu())
    torch.save(torch.cat(states), directory / f"states-{precision}.pt")
    return {"precision": precision, "load_s": load_s, "idle_gib": idle, "loaded_gib": loaded,
            "peak_gib": peak_rss_gib(), "encode_ms": 1000 * statistics.median(times),
            "device_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="base")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=512, help="padded prompt length (Wan: 512)")
    parser.add_argument("--prompts", type=int, default=5, help="distinct prompts timed, after one warm-up")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--measure", nargs=2, metavar=("DIR", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    dim = int(SHAPES[args.shape]["d_model"])
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1], args.device, dim, args.tokens,
                                 args.prompts)))
        return 0
    with tempfile.TemporaryDirectory(prefix="previz-bench-text-") as tmp:
        directory = Path(tmp)
        params = write_encoder(directory, args.shape)
        size = sum(p.stat().st_size for p in (directory / "text_encoder").glob("*.safetensors"))
        rows = []
        for precision in args.precisions.split(","):
            out = subprocess.run([sys.executable, __file__, "--measure", tmp, precision, "--device", args.device,
                                  "--tokens", str(args.tokens), "--prompts", str(args.prompts),
                                  "--shape", args.shape], check=True, capture_output=True, text=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        reference = torch.load(directory / "states-fp32.pt") if "fp32" in args.precisions.split(",") else None
        print(f"# bench_text: UMT5EncoderModel, {args.shape} shape, {params / 1e6:.0f}M parameters "
              f"({size / 2**30:.2f} GiB bf16 on disk), {args.tokens} tokens, on {args.device}; {cpu_model()}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")
        print("| precision | load | host peak RSS: after imports / after load / after encodes | encode per prompt "
              "| device peak | states vs fp32: max abs diff / max abs, min cosine |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            versus = "-"
            if reference is not None and r["precision"] != "fp32":
                states = torch.load(directory / f"states-{r['precision']}.pt")
                kept = reference.abs().sum(-1) > 0
                rel = float((states - reference).abs().max() / reference.abs().max())
                cos = float(torch.nn.functional.cosine_similarity(states[kept], reference[kept], dim=-1).min())
                versus = f"{100 * rel:.2f}%, {cos:.5f}"
            device_peak = f"{r['device_gib']:.2f} GiB" if r["device_gib"] is not None else "-"
            print(f"| {r['precision']} | {r['load_s']:.1f} s | {r['idle_gib']:.2f} / {r['loaded_gib']:.2f} / "
                  f"{r['peak_gib']:.2f} GiB | {r['encode_ms']:.0f} ms | {device_peak} | {versus} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
