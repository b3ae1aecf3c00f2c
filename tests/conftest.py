"""Shared fixtures: tiny packs built with the real classes and loaded by the real loader."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Isolate every test run from the user's own packs and caches, and from the network.
_HOME = Path(os.environ.setdefault("PREVIZ_TEST_HOME", str(Path(__file__).parent.parent / ".pytest_cache" / "previz")))
os.environ["PREVIZ_HOME"] = str(_HOME)
os.environ["PREVIZ_PACKS"] = str(_HOME / "test-packs")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from previz.pack_builder import build_draft_pack  # noqa: E402
from previz.packs import DraftDefaults, LatentLayout, Pack, load_pack  # noqa: E402

TEST_PACK = "previz-test"

TEST_LATENT = LatentLayout(space="previz-test-v0", channels=16, temporal=4, spatial=8)
TEST_DRAFT = DraftDefaults(
    width=64, height=32, fps=30, steps=2, shift=3.0, context_frames=1, window_frames=3, max_seconds=5.0,
    size_multiple=16,
)
TEST_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, freq_dim=32, ffn_dim=64, num_layers=2,
)


def make_test_pack(root: Path, *, pack_id: str = TEST_PACK, latent: LatentLayout = TEST_LATENT,
                   draft: DraftDefaults = TEST_DRAFT, seed: int = 0, transformer: dict | None = None) -> Pack:
    return build_draft_pack(
        root, pack_id=pack_id, latent=latent, draft=draft, transformer=transformer or TEST_TRANSFORMER,
        decoder_channels=8, text_tokens=16, seed=seed,
    )


@pytest.fixture(scope="session")
def test_pack() -> Pack:
    """The shared tiny pack, found by name like any installed pack."""
    root = Path(os.environ["PREVIZ_PACKS"]) / TEST_PACK
    if root.exists():
        shutil.rmtree(root)
    make_test_pack(root)
    return load_pack(TEST_PACK)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="session")
def text_encoder(test_pack: Pack):
    from previz.text import TextEncoder

    return TextEncoder(test_pack)


@pytest.fixture(scope="session")
def torch_model(test_pack: Pack, cache_dir: Path, text_encoder):
    from previz.take import DraftModel

    return DraftModel(test_pack, "torch", cache_dir=cache_dir, text=text_encoder)


@pytest.fixture(scope="session")
def ort_model(test_pack: Pack, cache_dir: Path, text_encoder):
    from previz.take import DraftModel

    return DraftModel(test_pack, "onnxruntime", cache_dir=cache_dir, text=text_encoder)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it."""
    exe = Path(sys.executable).with_name("previz")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def cuda_available() -> bool:
    from engines import cuda_device_name

    return cuda_device_name() is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
