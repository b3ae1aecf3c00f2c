"""Shared fixtures: tiny packs built with the real classes and loaded by the real loader."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

# Isolate every test run from the user's own packs and caches, from other test
# runs on the same machine, and from the network.
_HOME = Path(os.environ.get("PREVIZ_TEST_HOME") or tempfile.mkdtemp(prefix="previz-test-"))
if "PREVIZ_TEST_HOME" not in os.environ:
    atexit.register(shutil.rmtree, _HOME, True)
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
                   draft: DraftDefaults = TEST_DRAFT, seed: int = 0, transformer: dict | None = None,
                   context_attention: str = "bidirectional") -> Pack:
    return build_draft_pack(
        root, pack_id=pack_id, latent=latent, draft=draft, transformer=transformer or TEST_TRANSFORMER,
        decoder_channels=8, text_tokens=16, seed=seed, context_attention=context_attention,
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

    return DraftModel(test_pack, "torch", cache_dir=cache_dir, text=text_encoder, device="cpu")  # the fp32 reference


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


class LiveServer:
    """A real previz server on an ephemeral loopback port, in its own thread and event loop."""

    def __init__(self, pack, store_root: Path, cache_dir: Path, **config) -> None:
        import asyncio
        import threading

        from previz.drafts import DraftStore
        from previz.server import PrevizServer, ServeConfig
        from previz.take import DraftModel

        self.store = DraftStore(store_root)
        model = DraftModel(pack, "torch", cache_dir=cache_dir)
        model.warmup()
        self.loop = asyncio.new_event_loop()
        self.server = PrevizServer(ServeConfig(port=0, **config), model=model, store=self.store,
                                   backends=["torch"])
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=60)
        self.port = self.server.port
        self.url = self.server.url
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.store.close()


@pytest.fixture
def live_server(test_pack, tmp_path, cache_dir):
    server = LiveServer(test_pack, tmp_path / "drafts", cache_dir)
    yield server
    server.close()


@pytest.fixture(scope="session")
def backlot_pack() -> Pack:
    """The trained pack that ships inside previz (the default): blockout control, camera, text."""
    from previz.packs import BUILTIN_PACKS

    return load_pack(str(BUILTIN_PACKS / "previz-backlot"))


@pytest.fixture
def backlot_server(backlot_pack, tmp_path, cache_dir):
    server = LiveServer(backlot_pack, tmp_path / "drafts", cache_dir)
    yield server
    server.close()


# ----------------------------------------------------------------------------- the final stage


@pytest.fixture(scope="session")
def final_pack() -> Pack:
    """The embedded final pack, built where the CLI looks for it (so subprocesses find it too)."""
    from previz.packs import user_packs_dir
    from upscale.final_pack import FINAL_PACK_ID, ensure_final_pack

    return ensure_final_pack(user_packs_dir() / FINAL_PACK_ID, say=lambda _m: None)


@pytest.fixture(scope="session")
def latent_draft_pack() -> Pack:
    """A draft pack in the final pack's latent space (Wan layout, causal first frame): latent handoff."""
    from upscale.final_pack import FINAL_LATENT

    root = Path(os.environ["PREVIZ_PACKS"]) / "previz-test-wanspace"
    if root.exists():
        shutil.rmtree(root)
    make_test_pack(root, pack_id="previz-test-wanspace", latent=FINAL_LATENT, seed=1)
    return load_pack("previz-test-wanspace")


def make_stored_draft(store, pack: Pack, cache_dir: Path, *, seconds: float = 0.1, seed: int = 5,
                      approve: bool = True):
    """A real take from ``pack`` (torch backend), stored as a draft like the server stores one."""
    import numpy as np

    from previz.recipe import Recipe, resolve
    from previz.take import DraftModel

    model = DraftModel(pack, "torch", cache_dir=cache_dir)
    recipe = resolve(Recipe(prompt="a red cube on a sandy plain", seed=seed, seconds=seconds,
                            camera={"preset": "orbit_left"}), pack)
    latents: list = []
    frames = [f.image for f in model.generate(recipe, on_chunk=lambda _c, lat: latents.append(lat))]
    draft = store.add(recipe=recipe.to_dict(), meta=model.metadata(recipe), frames=frames,
                      latents=np.concatenate(latents, axis=2), fps=model.fps)
    if approve:
        store.set_state(draft.id, "approved")
    return draft


# ----------------------------------------------------------------------------- imported Wan checkpoints


@pytest.fixture(scope="session")
def wan_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """kind -> a tiny random diffusers-format Wan directory (tests/wan_dirs.py), built once per session."""
    from wan_dirs import write_wan_dir

    built: dict[str, Path] = {}
    base = tmp_path_factory.mktemp("wan-checkpoints")

    def get(kind: str) -> Path:
        if kind not in built:
            built[kind] = write_wan_dir(base / kind, kind)
        return built[kind]

    return get


def run_module_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """This checkout's CLI in a subprocess (``python -m previz.cli``), as a user runs ``previz``."""
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "previz.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=repo)


def trace_engine_compiles(monkeypatch, backend) -> None:
    """torch.compile in the engines traced by dynamo with ``backend`` instead of inductor (the same guards),
    so a compiled engine runs in seconds on a CPU.  With the ``dynamo_reset`` fixture."""
    import torch

    import engines.torch_backend

    real_compile = torch.compile
    monkeypatch.setattr(engines.torch_backend.torch, "compile",
                        lambda module, mode=None, **options: real_compile(module, backend=backend, **options))


@pytest.fixture
def dynamo_reset():
    """Dynamo's compiled code and counters cleared before and after the test."""
    import torch
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # leaves the counters as they are
    counters.clear()
    yield
    torch._dynamo.reset()
    counters.clear()


@pytest.fixture
def traced_eagerly(monkeypatch, dynamo_reset):
    """The engines' torch.compile traced by dynamo's ``eager`` backend; dynamo's counters
    (``["stats"]["unique_graphs"]``)."""
    from torch._dynamo.utils import counters

    trace_engine_compiles(monkeypatch, "eager")
    return counters


def traced_take(pack: Pack, cache_dir: Path, text_encoder, counters, seconds: float,
                **options: Any) -> tuple[int, list, int, Any]:
    """A compiled DraftModel's warm-up, then one take: (graphs traced by the warm-up, the take's frames,
    graphs traced by the end of the take, the model).  ``options`` go to the engines."""
    from previz.recipe import Recipe
    from previz.take import DraftModel

    model = DraftModel(pack, "torch", cache_dir=cache_dir, text=text_encoder, device="cpu", compile=True, **options)
    model.warmup()
    warm = counters["stats"]["unique_graphs"]
    frames = list(model.generate(Recipe(prompt="a dolly past a diner", seed=1, seconds=seconds,
                                        camera={"preset": "dolly_in"})))
    return warm, frames, counters["stats"]["unique_graphs"], model
