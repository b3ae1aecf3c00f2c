"""The engine cache trusts only what it built: manifest, hashes, atomic writes."""

from __future__ import annotations

import pytest

from engines.cache import EngineCache, cache_key
from engines.errors import EngineCacheError

KEY_FIELDS = dict(onnx_sha256="a" * 64, shape_profile="x=1x2", precision="fp16", runtime="tensorrt",
                  runtime_version="11.4", gpu="NVIDIA H100")


def test_a_plan_not_in_the_manifest_is_never_loaded(tmp_path):
    cache = EngineCache(tmp_path)
    key = cache_key(**KEY_FIELDS)
    cache.plans.mkdir(parents=True)
    cache.plan_path(key).write_bytes(b"planted plan")
    with pytest.raises(EngineCacheError, match="not in the engine cache manifest"):
        cache.load(key)


def test_an_altered_plan_is_refused(tmp_path):
    cache = EngineCache(tmp_path)
    key = cache_key(**KEY_FIELDS)
    cache.store(key, b"real plan", meta={})
    assert cache.load(key) == b"real plan"
    cache.plan_path(key).write_bytes(b"evil plan")
    with pytest.raises(EngineCacheError, match="altered"):
        cache.load(key)


def test_get_or_build_builds_once(tmp_path):
    cache = EngineCache(tmp_path)
    calls = []
    build = lambda: calls.append(1) or b"plan"  # noqa: E731
    key = cache_key(**KEY_FIELDS)
    assert cache.get_or_build(key, build, meta={"graph": "denoiser"}) == b"plan"
    assert EngineCache(tmp_path).get_or_build(key, build, meta={}) == b"plan"
    assert calls == [1]
    assert cache.manifest()["entries"][key]["meta"] == {"graph": "denoiser"}


@pytest.mark.parametrize("field", sorted(KEY_FIELDS))
def test_every_key_field_changes_the_key(field):
    changed = {**KEY_FIELDS, field: KEY_FIELDS[field] + "-other"}
    assert cache_key(**changed) != cache_key(**KEY_FIELDS)


def test_pinned_dir_drops_files_it_did_not_record(tmp_path):
    cache = EngineCache(tmp_path)
    d = cache.pinned_dir("k")
    (d / "ort_trt.engine").write_bytes(b"built by the runtime")
    cache.pin_dir("k")
    (d / "planted.engine").write_bytes(b"not ours")
    d = cache.pinned_dir("k")
    assert sorted(p.name for p in d.iterdir()) == ["ort_trt.engine"]
    (d / "ort_trt.engine").write_bytes(b"tampered")
    assert list(cache.pinned_dir("k").iterdir()) == []


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(EngineCacheError, match="corrupt"):
        EngineCache(tmp_path).load("k")
