"""Engine cache: built artifacts keyed by everything that changes them, with a manifest.

TensorRT plans are executable code for the GPU, so the rule is strict: a plan
that is not recorded in *our* manifest, with the hash it had when we built it,
is never loaded, whatever its file name.  The key covers the ONNX sha256, the
shape profile, the precision, the runtime version and the GPU name, so a driver
or GPU change builds anew instead of loading an incompatible plan.

Writes are atomic (engines.atomic: temp file, fsync, rename) and the manifest is updated under
an exclusive file lock, so two processes building at once cannot corrupt it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engines.atomic import atomic_write, file_lock
from engines.errors import EngineCacheError

MANIFEST = "manifest.json"


def cache_key(
    *, onnx_sha256: str, shape_profile: str, precision: str, runtime: str, runtime_version: str, gpu: str
) -> str:
    blob = json.dumps(
        {
            "onnx_sha256": onnx_sha256,
            "shape_profile": shape_profile,
            "precision": precision,
            "runtime": runtime,
            "runtime_version": runtime_version,
            "gpu": gpu,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class EngineCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.plans = self.root / "plans"

    # ------------------------------------------------------------------ manifest

    def _locked(self) -> contextlib.AbstractContextManager[bool]:
        return file_lock(self.root / ".lock")

    def manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        if not path.is_file():
            return {"entries": {}}
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise EngineCacheError(f"{path} is corrupt; delete the cache directory {self.root} to rebuild") from None
        return data

    def _write_manifest(self, data: dict[str, Any]) -> None:
        atomic_write(self.root / MANIFEST, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())

    # ------------------------------------------------------------------ plans

    def plan_path(self, key: str) -> Path:
        return self.plans / f"{key}.plan"

    def load(self, key: str) -> bytes:
        """The bytes of a plan we built, or EngineCacheError: never an unrecorded file."""
        entry = self.manifest()["entries"].get(key)
        path = self.plan_path(key)
        if entry is None:
            raise EngineCacheError(
                f"refusing {path}: it is not in the engine cache manifest {self.root / MANIFEST}. "
                "Engine plans are executable code; previz loads only plans it built itself.",
                value=str(path),
            )
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise EngineCacheError(f"{path} is in the manifest but missing on disk") from None
        if sha256_bytes(data) != entry["sha256"]:
            raise EngineCacheError(
                f"refusing {path}: its sha256 no longer matches the manifest (the file was altered)",
                value=str(path),
            )
        return data

    def contains(self, key: str) -> bool:
        return key in self.manifest()["entries"]

    def store(self, key: str, data: bytes, meta: dict[str, Any]) -> Path:
        path = self.plan_path(key)
        with self._locked():
            atomic_write(path, data)
            manifest = self.manifest()
            manifest["entries"][key] = {
                "file": str(path.relative_to(self.root)),
                "sha256": sha256_bytes(data),
                "bytes": len(data),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "meta": meta,
            }
            self._write_manifest(manifest)
        return path

    def get_or_build(self, key: str, build: Callable[[], bytes], meta: dict[str, Any]) -> bytes:
        """One build per key, even across processes: the second waits, then loads."""
        if self.contains(key):
            return self.load(key)
        with file_lock(self.root / f".build-{key}.lock"):
            if self.contains(key):
                return self.load(key)
            data = build()
            self.store(key, data, meta)
            return data

    # ------------------------------------------------------------------ directories another runtime writes

    def pinned_dir(self, key: str) -> Path:
        """A directory for a runtime's own engine cache (ONNX Runtime's TensorRT EP).

        That runtime loads whatever plan files it finds there, so before handing
        the directory over we delete every file whose hash is not the one we
        recorded; after the runtime has written, :meth:`pin_dir` records them.
        """
        directory = self.root / "dirs" / key
        with self._locked():
            directory.mkdir(parents=True, exist_ok=True)
            pinned: dict[str, str] = self.manifest().get("dirs", {}).get(key, {})
            for path in sorted(p for p in directory.rglob("*") if p.is_file()):
                rel = str(path.relative_to(directory))
                if pinned.get(rel) != sha256_bytes(path.read_bytes()):
                    path.unlink()
        return directory

    def pin_dir(self, key: str) -> None:
        directory = self.root / "dirs" / key
        with self._locked():
            manifest = self.manifest()
            manifest.setdefault("dirs", {})[key] = {
                str(p.relative_to(directory)): sha256_bytes(p.read_bytes())
                for p in sorted(directory.rglob("*"))
                if p.is_file()
            }
            self._write_manifest(manifest)
