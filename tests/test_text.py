"""Text: a real offline encoder, padded to a static shape, behind an LRU cache."""

from __future__ import annotations

import numpy as np

from previz.recipe import Recipe
from previz.text import TextEncoder


def test_states_have_the_pack_shape_and_zero_padding(text_encoder):
    states = text_encoder("a red cube on a sandy plain")
    assert states.shape == (1, 16, 384) and states.dtype == np.float32
    n_tokens = len(text_encoder.tokenizer("a red cube on a sandy plain")["input_ids"])
    assert np.abs(states[0, :n_tokens]).sum(axis=-1).min() > 0
    assert np.all(states[0, n_tokens:] == 0)


def test_different_prompts_differ_and_meaning_is_encoded(text_encoder):
    a, b, c = (text_encoder(p)[0, 0] for p in ("a red car", "a crimson automobile", "a bowl of soup"))
    cos = lambda x, y: float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))  # noqa: E731
    assert cos(a, b) > cos(a, c)  # a real sentence encoder, not hashed noise


def test_a_seed_only_change_never_re_encodes_text(torch_model):
    encoder: TextEncoder = torch_model.text
    prompt = "a lighthouse in a gale, unique prompt for this test"
    before = encoder.encode_calls
    for seed in (1, 2, 3):
        list(torch_model.generate(Recipe(prompt=prompt, seed=seed, seconds=0.2)))
    assert encoder.encode_calls == before + 1


def test_lru_evicts_the_least_recently_used(test_pack):
    encoder = TextEncoder(test_pack, cache_size=2)
    encoder("one"), encoder("two"), encoder("one"), encoder("three")
    assert encoder.encode_calls == 3
    encoder("one")  # still cached: it was used after "two"
    assert encoder.encode_calls == 3
    encoder("two")  # evicted
    assert encoder.encode_calls == 4


def test_cached_states_cannot_be_modified(text_encoder):
    states = text_encoder("immutable")
    assert not states.flags.writeable
