"""Text: a real offline encoder, padded to a static shape, on the requested device and precision, behind an LRU
cache of device tensors."""

from __future__ import annotations

import pytest
import torch

from previz.errors import BackendUnavailableError
from previz.recipe import Recipe
from previz.take import DraftModel, Take
from previz.text import TextEncoder

PROMPTS = ("a red cube on a sandy plain", "a lighthouse in a gale at dusk, waves crash", "",
           "a crimson automobile drives past at night")
# bf16 states against fp32 ones, over PROMPTS: measured max |bf16 - fp32| / max |fp32| = 0.8% for MiniLM
# (1.3% for tiny UMT5, tests/test_pack_import.py) and per-token cosine >= 0.99985; bounds with room to spare.
BF16_STATES_REL = 0.03
BF16_STATES_COS = 0.999


def assert_close_to_fp32(states: torch.Tensor, reference: torch.Tensor) -> None:
    """bf16 states against fp32 ones: the same padding, and the same token states within the bounds above."""
    kept = reference[0].abs().sum(-1) > 0
    assert torch.equal(states[0, ~kept], reference[0, ~kept])  # zero, both
    assert float((states - reference).abs().max()) <= BF16_STATES_REL * float(reference.abs().max())
    cos = torch.nn.functional.cosine_similarity(states[0, kept], reference[0, kept], dim=-1)
    assert float(cos.min()) >= BF16_STATES_COS


def test_states_are_float32_device_tensors_of_the_pack_shape_with_zero_padding(text_encoder):
    states = text_encoder("a red cube on a sandy plain")
    assert isinstance(states, torch.Tensor)
    assert states.shape == (1, 16, 384) and states.dtype == torch.float32 and states.device == torch.device("cpu")
    n_tokens = len(text_encoder.tokenizer("a red cube on a sandy plain")["input_ids"])
    assert states[0, :n_tokens].abs().sum(-1).min() > 0
    assert torch.all(states[0, n_tokens:] == 0)


def test_different_prompts_differ_and_meaning_is_encoded(text_encoder):
    a, b, c = (text_encoder(p)[0, 0] for p in ("a red car", "a crimson automobile", "a bowl of soup"))
    cos = lambda x, y: float(x @ y / x.norm() / y.norm())  # noqa: E731
    assert cos(a, b) > cos(a, c)  # a real sentence encoder, not hashed noise


def test_bf16_is_loaded_as_bf16_and_matches_fp32(test_pack, text_encoder):
    encoder = TextEncoder(test_pack, precision="bf16")
    assert text_encoder.precision == "fp32" and encoder.precision == "bf16"  # fp32: the CPU default
    assert encoder.model.config.dtype == torch.bfloat16  # set by from_pretrained's torch_dtype, not by .to()
    assert {p.dtype for p in encoder.model.parameters()} == {torch.bfloat16}  # BERT keeps nothing in fp32
    for prompt in PROMPTS:
        states = encoder(prompt)
        assert states.dtype == torch.float32 and states.device == encoder.device
        assert_close_to_fp32(states, text_encoder(prompt))


def test_a_repeated_prompt_returns_the_cached_tensor_itself_and_refuses_writes(text_encoder):
    states = text_encoder("the cache's own tensor")
    calls = text_encoder.encode_calls
    assert text_encoder("the cache's own tensor") is states and text_encoder.encode_calls == calls
    assert states.is_inference()  # made under inference mode: an in-place write outside it raises
    with pytest.raises(RuntimeError, match="[Ii]nference tensor"):
        states.add_(1.0)


def test_a_seed_only_change_never_re_encodes_text(torch_model):
    encoder: TextEncoder = torch_model.text
    prompt = "a lighthouse in a gale, unique prompt for this test"
    before = encoder.encode_calls
    for seed in (1, 2, 3):
        list(torch_model.generate(Recipe(prompt=prompt, seed=seed, seconds=0.2)))
    assert encoder.encode_calls == before + 1


def test_a_take_reads_the_cached_states_without_a_copy_and_never_writes_them(torch_model):
    recipe = Recipe(prompt="a quiet harbour, states shared by takes", negative_prompt="blur", guidance=2.0,
                    seconds=0.5)
    prompt, negative = torch_model.text(recipe.prompt), torch_model.text(recipe.negative_prompt)
    before = prompt.clone(), negative.clone()
    take = Take(torch_model, recipe)
    assert take.prompt is prompt and take.negative is negative  # same device: no host->device copy per take
    while not take.done:
        list(take.step().frames)
    assert torch.equal(prompt, before[0]) and torch.equal(negative, before[1])


def test_lru_evicts_the_least_recently_used(test_pack):
    encoder = TextEncoder(test_pack, cache_size=2)
    encoder("one"), encoder("two"), encoder("one"), encoder("three")
    assert encoder.encode_calls == 3
    encoder("one")  # still cached: it was used after "two"
    assert encoder.encode_calls == 3
    encoder("two")  # evicted
    assert encoder.encode_calls == 4


def test_a_draft_model_builds_its_encoder_on_the_denoiser_s_device_and_records_it(test_pack, cache_dir):
    model = DraftModel(test_pack, "torch", cache_dir=cache_dir, device="cpu", precision="bf16")
    try:
        # On a CPU, the dtype the checkpoint stores (the test pack's MiniLM: fp32), whatever the engines run.
        assert model.text.device == model.device and model.text.precision == "fp32"
        assert model.engine_info()["text"] == {"device": "cpu", "precision": "fp32"}
        assert model.metadata(Recipe(prompt="x"))["engines"]["text"]["precision"] == "fp32"
    finally:
        model.close()


def test_the_text_precision_beside_the_engines(test_pack):
    from engines.precision import text_precision

    # On CUDA bf16 (UMT5 overflows in fp16; fp8 is a matmul format) unless the engines run fp32.
    assert [text_precision(p, "cuda") for p in ("fp32", "bf16", "fp16", "fp8")] == ["fp32", "bf16", "bf16", "bf16"]
    assert {text_precision(p, "cpu") for p in ("fp32", "bf16", "fp16")} == {None}  # the stored dtype
    with pytest.raises(BackendUnavailableError, match="fp8 is for the engines' matmuls") as err:
        TextEncoder(test_pack, precision="fp8")
    assert err.value.field == "precision"


@pytest.mark.gpu
def test_on_cuda_the_default_is_bf16_and_states_stay_on_the_gpu(test_pack, text_encoder):
    encoder = TextEncoder(test_pack, device="cuda")
    assert encoder.precision == "bf16" and {p.device.type for p in encoder.model.parameters()} == {"cuda"}
    for prompt in PROMPTS:
        states = encoder(prompt)
        assert states.device.type == "cuda" and states.dtype == torch.float32
        assert_close_to_fp32(states.cpu(), text_encoder(prompt))
