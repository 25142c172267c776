"""What a server serves at one moment: an immutable :class:`Snapshot` of loaded versions.

- :class:`VersionPolicy`: which versions of a model to serve (latest, all, specific).
- :func:`check_version_folder`: a version folder against its ``manifest.json``: pending
  (:class:`PendingError`) while a listed file is missing, refused when one differs.
- :func:`load_version`: check, load and warm one version (a :class:`LoadedModel`).
- :class:`Snapshot`: ``{name -> {version -> LoadedModel}}``, never changed once built;
  :class:`FixedModel`: the snapshot of one model file, served as version 1.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Protocol

import numpy as np

from pomona.runtime.artifacts import MANIFEST_FILE, ONNX_FILE
from pomona.runtime.errors import ArtifactError
from pomona.runtime.files import file_sha256
from pomona.runtime.predictor import Predictor
from pomona.runtime.serve.codec import ModelIO, RequestError

__all__ = [
    "FixedModel",
    "LoadedModel",
    "ModelSource",
    "PendingError",
    "Snapshot",
    "VersionPolicy",
    "check_version_folder",
    "load_predictor",
    "load_version",
    "manifest_stamp",
]

#: Version folders: a positive integer without leading zeros.
VERSION_NAME = re.compile(r"[1-9][0-9]{0,17}")

Loader = Callable[[Path], Predictor]


def load_predictor(
    model: str | os.PathLike[str], *, check_manifest: bool = True, backend: str = "auto"
) -> Predictor:
    """The predictor a server process uses: one intra-op thread, no spinning."""
    return Predictor(
        model,
        check_manifest=check_manifest,
        intra_op_threads=1,
        allow_spinning=False,
        backend=backend,
    )


# -- version policy --------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of each model are served, as in Triton's ``version_policy``.

    ``latest`` (the ``count`` highest versions that load), ``all``, or ``specific``
    (the listed ``versions``). Written ``latest``, ``latest:N``, ``all`` or
    ``specific:1,3`` by :meth:`parse`.
    """

    kind: Literal["latest", "all", "specific"] = "latest"
    count: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        kind, _, arg = text.strip().partition(":")
        try:
            if kind == "latest":
                count = int(arg) if arg else 1
                if count >= 1:
                    return cls("latest", count)
            elif kind == "all" and not arg:
                return cls("all")
            elif kind == "specific" and arg:
                versions = tuple(sorted({int(v) for v in arg.split(",")}))
                if all(v >= 1 for v in versions):
                    return cls("specific", versions=versions)
        except ValueError:
            pass
        raise ValueError(
            f"version policy {text!r}: use latest, latest:N, all, or specific:V[,V...]"
        )

    def wanted(self, versions: Iterable[int]) -> list[int]:
        """The candidate versions, in the order to try them (highest first)."""
        ordered = sorted(versions, reverse=True)
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered

    def enough(self, loaded: int) -> bool:
        """Whether ``loaded`` versions satisfy the policy (stop trying older ones)."""
        return self.kind == "latest" and loaded >= self.count


# -- one version ----------------------------------------------------------------------------


class PendingError(ArtifactError):
    """A version folder that is not complete yet (being written or copied)."""


def manifest_stamp(folder: Path) -> tuple[int, int, int] | None:
    """What tells a changed manifest: inode, size and modification time (None: none there)."""
    try:
        stat = (folder / MANIFEST_FILE).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def check_version_folder(folder: Path) -> str:
    """Check a version folder against its manifest; return the sha256 of its model.

    Raises :class:`PendingError` when the manifest or a file it lists is missing,
    :class:`ArtifactError` when the manifest is unreadable or a file differs from it.
    """
    manifest = folder / MANIFEST_FILE
    try:
        data = manifest.read_bytes()
    except FileNotFoundError:
        raise PendingError(f"{folder}: no {MANIFEST_FILE} yet") from None
    try:
        listed = json.loads(data)["artifacts"]
        expected = {name: entry["sha256"] for name, entry in listed.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ArtifactError(f"{folder}: unreadable {MANIFEST_FILE} (no artifacts sha256)") from None
    if ONNX_FILE not in expected:
        raise ArtifactError(f"{folder}: {MANIFEST_FILE} does not list {ONNX_FILE}")
    for name in expected:
        if not (folder / name).is_file():
            raise PendingError(f"{folder}: {name} listed in {MANIFEST_FILE} is not there yet")
    for name, sha in expected.items():
        if file_sha256(folder / name) != sha:
            raise ArtifactError(f"{folder}: {name} differs from {MANIFEST_FILE} (sha256)")
    return str(expected[ONNX_FILE])


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One version of one model, loaded, checked and warmed."""

    name: str
    version: str
    predictor: Predictor
    folder: Path
    #: sha256 of the model file: the identity of what is served.
    digest: str
    stamp: tuple[int, int, int] | None
    io: ModelIO = field(init=False)

    def __post_init__(self) -> None:
        p = self.predictor
        object.__setattr__(self, "io", ModelIO(p.input_name, p.output_name, p.n_features))


def load_version(name: str, version: int, folder: Path, loader: Loader) -> LoadedModel:
    """Check ``folder`` against its manifest, load its model, warm it with one prediction."""
    stamp = manifest_stamp(folder)
    digest = check_version_folder(folder)
    predictor = loader(folder / ONNX_FILE)
    try:
        predictor.predict(np.zeros((1, predictor.n_features), dtype=np.float32))
    except Exception as err:
        raise ArtifactError(f"{folder}: the warm-up prediction failed: {err}") from err
    return LoadedModel(name, str(version), predictor, folder, digest, stamp)


# -- the snapshot ----------------------------------------------------------------------------


class Snapshot:
    """What is served at one moment: ``{name -> {version -> LoadedModel}}``, never changed."""

    __slots__ = ("_latest", "models")

    def __init__(self, models: Mapping[str, Mapping[str, LoadedModel]]) -> None:
        self.models: Mapping[str, Mapping[str, LoadedModel]] = MappingProxyType(
            {name: MappingProxyType(dict(v)) for name, v in models.items() if v}
        )
        self._latest = {
            name: versions[max(versions, key=int)] for name, versions in self.models.items()
        }

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        """The version asked for, or the latest ready one; :class:`RequestError` (404) if none."""
        versions = self.models.get(name)
        if versions is None:
            served = ", ".join(sorted(self.models)) or "none"
            raise RequestError(f"unknown model {name!r}; this server serves: {served}", 404)
        if not version:
            return self._latest[name]
        model = versions.get(version)
        if model is None:
            ready = ", ".join(sorted(versions, key=int))
            raise RequestError(
                f"version {version!r} of model {name!r} is not ready; ready: {ready}", 404
            )
        return model

    def versions(self, name: str) -> list[str]:
        return sorted(self.models.get(name, {}), key=int)

    def __len__(self) -> int:
        return sum(len(v) for v in self.models.values())


class ModelSource(Protocol):
    """Where a server finds its models: anything with a current :class:`Snapshot`."""

    snapshot: Snapshot


class FixedModel:
    """One model file, served as version ``version`` under ``name``: a snapshot that stays."""

    def __init__(self, predictor: Predictor, name: str, version: str = "1") -> None:
        model = LoadedModel(
            name, version, predictor, predictor.path.parent, predictor.sha256, (0, 0, 0)
        )
        self.snapshot = Snapshot({name: {version: model}})
