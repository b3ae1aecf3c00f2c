"""Loading refuses what could execute code, before anything executes: a planted pickle payload never runs.

(Plans not in the engine manifest or altered: tests/test_cache.py; ONNX external data outside its
directory: tests/test_engines.py; manifests pointing outside a pack: tests/test_packs.py.)
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

from previz.errors import PackError, UnsafeWeightsError
from previz.packs import load_pack


class Payload:
    """Unpickling this creates ``marker``: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


@pytest.fixture
def pack_copy(test_pack, tmp_path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(test_pack.root, root)
    return root


def test_the_payload_is_real(tmp_path):
    pickle.loads(pickle.dumps(Payload(tmp_path / "ran")))
    assert (tmp_path / "ran").exists()  # so its absence below means something


@pytest.mark.parametrize("name", ["diffusion_pytorch_model.bin", "model.pt", "model.ckpt", "model.pkl"])
def test_a_planted_pickle_beside_the_weights_never_runs(pack_copy, tmp_path, name):
    marker = tmp_path / "ran"
    (pack_copy / "transformer" / name).write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UnsafeWeightsError):
        load_pack(str(pack_copy))
    assert not marker.exists()


def test_a_pickle_disguised_as_safetensors_never_runs(pack_copy, tmp_path):
    marker = tmp_path / "ran"
    (pack_copy / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(PackError):
        load_pack(str(pack_copy))
    assert not marker.exists()
