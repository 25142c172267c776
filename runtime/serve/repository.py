"""A model repository: every model and version in a folder, swapped in whole when it changes.

The layout is the one ``pomona export --triton-repo`` writes (and Triton reads)::

    REPO/<name>/config.pbtxt
    REPO/<name>/<version>/model.onnx
    REPO/<name>/<version>/manifest.json     (and model.pt)

A version folder is served only when its ``manifest.json`` is there and every file it
lists is there with the sha256 recorded: a folder still being copied is *pending*
(tried again on the next scan), one whose files differ from its manifest or that
onnxruntime refuses is *refused* with a logged reason (tried again when its manifest
changes). A loaded version is checked, then warmed with one prediction.

What is served is one immutable :class:`Snapshot` ``{name -> {version -> LoadedModel}}``.
:meth:`ModelRepository.refresh` builds the next one off to the side (reusing the
versions that did not change) and replaces the reference in one assignment: a request
takes the snapshot once and finishes on the version it started with, and a version
that fails to load never replaces the one being served.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from pomona.runtime.artifacts import MANIFEST_FILE, ONNX_FILE
from pomona.runtime.errors import ArtifactError
from pomona.runtime.files import file_sha256
from pomona.runtime.predictor import Predictor
from pomona.runtime.serve.codec import ModelIO, RequestError

__all__ = [
    "CONFIG_FILE",
    "LoadedModel",
    "ModelRepository",
    "Snapshot",
    "VersionPolicy",
    "check_version_folder",
    "is_repository",
]

logger = logging.getLogger("pomona.serve")

#: The Triton model configuration beside the version folders.
CONFIG_FILE = "config.pbtxt"
_VERSION = re.compile(r"[1-9][0-9]{0,17}")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

Loader = Callable[[Path], Predictor]


def is_repository(path: Path) -> bool:
    """Whether ``path`` is a folder (a model repository) rather than a model file."""
    return path.is_dir()


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


def _stamp(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def check_version_folder(folder: Path) -> str:
    """Check a version folder against its manifest; return the manifest's sha256.

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
    return file_sha256(manifest)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One version of one model, loaded, checked and warmed."""

    name: str
    version: str
    predictor: Predictor
    folder: Path
    #: sha256 of the version's manifest.json: the identity of what is served.
    digest: str
    stamp: tuple[int, int, int]
    io: ModelIO = field(init=False)

    def __post_init__(self) -> None:
        p = self.predictor
        object.__setattr__(self, "io", ModelIO(p.input_name, p.output_name, p.n_features))

    def metadata(self, versions: list[str]) -> dict[str, Any]:
        """The Open Inference Protocol model metadata of this version."""
        p = self.predictor
        return {
            "name": self.name,
            "versions": versions,
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": p.input_name, "datatype": "FP32", "shape": [-1, p.n_features]}],
            "outputs": [{"name": p.output_name, "datatype": "FP32", "shape": [-1, p.n_targets]}],
            "parameters": {
                "feature_names": ",".join(p.feature_names),
                "target_names": ",".join(p.target_names),
                "sha256": self.digest,
            },
        }


def load_version(name: str, version: int, folder: Path, loader: Loader) -> LoadedModel:
    """Check ``folder`` against its manifest, load its model, warm it with one prediction."""
    stamp = _stamp(folder / MANIFEST_FILE) if (folder / MANIFEST_FILE).is_file() else (0, 0, 0)
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


# -- the repository --------------------------------------------------------------------------


@dataclass
class _Attempt:
    """The last failed load of one version folder, so it is logged once per change."""

    stamp: tuple[int, int, int] | None
    state: Literal["pending", "refused"]
    reason: str


class ModelRepository:
    """The models of a repository folder, reloaded by :meth:`refresh` (or a poll thread).

    With ``explicit`` (``--model-control explicit``) only the models named to
    :meth:`load` are served; otherwise every model in the folder.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        loader: Loader,
        policy: VersionPolicy | None = None,
        explicit: bool = False,
        startup_models: Iterable[str] = (),
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ArtifactError(f"{self.root}: model repository folder does not exist")
        self.policy = policy or VersionPolicy()
        self.explicit = explicit
        self._loader = loader
        self._lock = threading.Lock()  # one refresh at a time; readers never take it
        self._attempts: dict[tuple[str, int], _Attempt] = {}
        self._wanted: set[str] = set(startup_models)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.snapshot = Snapshot({})
        self.refresh()

    # -- scanning ------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        """The model folders in the repository (those holding a numbered version folder)."""
        names = []
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and _NAME.fullmatch(entry.name) and self._version_dirs(entry):
                names.append(entry.name)
        return names

    @staticmethod
    def _version_dirs(model_dir: Path) -> dict[int, Path]:
        found = {}
        for entry in model_dir.iterdir():
            if _VERSION.fullmatch(entry.name) and entry.is_dir():
                found[int(entry.name)] = entry
        return found

    # -- building the next snapshot ------------------------------------------------------

    def refresh(self, names: Iterable[str] | None = None) -> Snapshot:
        """Scan the repository and swap in what changed; return the snapshot now served.

        ``names``: only these models are rescanned (the others stay as they are).
        """
        with self._lock:
            current = self.snapshot
            served = self._served_names()
            todo = served if names is None else set(names) & served
            models = {name: dict(current.models.get(name, {})) for name in served}
            for name in todo:
                models[name] = self._model_versions(name, current.models.get(name, {}))
            snapshot = Snapshot(models)
            if _changed(current, snapshot):
                self.snapshot = snapshot  # the one swap: readers see old or new, whole
                logger.info("serving %s", _describe(snapshot))
            return snapshot

    def _served_names(self) -> set[str]:
        on_disk = set(self.model_names())
        return on_disk & self._wanted if self.explicit else on_disk

    def _model_versions(
        self, name: str, current: Mapping[str, LoadedModel]
    ) -> dict[str, LoadedModel]:
        folders = self._version_dirs(self.root / name)
        chosen: dict[str, LoadedModel] = {}
        for version in self.policy.wanted(folders):
            model = self._version(name, version, folders[version], current)
            if model is not None:
                chosen[str(version)] = model
                if self.policy.enough(len(chosen)):
                    break
        return chosen

    def _version(
        self, name: str, version: int, folder: Path, current: Mapping[str, LoadedModel]
    ) -> LoadedModel | None:
        """The version to serve from ``folder``: the one served if unchanged, else a fresh load."""
        old = current.get(str(version))
        try:
            stamp: tuple[int, int, int] | None = _stamp(folder / MANIFEST_FILE)
        except OSError:
            stamp = None
        if old is not None and old.stamp == stamp:
            return old
        attempt = self._attempts.get((name, version))
        if attempt is not None and attempt.state == "refused" and attempt.stamp == stamp:
            return old  # refused before and unchanged since: not retried, not logged again
        try:
            model = load_version(name, version, folder, self._loader)
        except ArtifactError as err:
            state: Literal["pending", "refused"] = (
                "pending" if isinstance(err, PendingError) else "refused"
            )
            if attempt is None or (attempt.state, attempt.reason) != (state, str(err)):
                log = logger.info if state == "pending" else logger.warning
                served = ", ".join(sorted(current, key=int))
                keeping = f"; still serving version {served}" if served else ""
                log("model %s version %d %s: %s%s", name, version, state, err, keeping)
            self._attempts[(name, version)] = _Attempt(stamp, state, str(err))
            return old
        self._attempts.pop((name, version), None)
        return model

    # -- model control (the repository extension) ----------------------------------------

    def index(self) -> list[dict[str, str]]:
        """Every version folder with its state: READY, UNAVAILABLE (and why), or pending."""
        snapshot = self.snapshot
        rows = []
        for name in self.model_names():
            for version in sorted(self._version_dirs(self.root / name)):
                row = {"name": name, "version": str(version)}
                attempt = self._attempts.get((name, version))
                if str(version) in snapshot.models.get(name, {}):
                    row["state"] = "READY"
                elif attempt is not None:
                    row["state"] = "UNAVAILABLE"
                    row["reason"] = attempt.reason
                else:
                    row["state"] = "UNAVAILABLE"
                    row["reason"] = "unloaded"
                rows.append(row)
        return rows

    def load(self, name: str) -> None:
        """Serve model ``name`` (loading or reloading it); 404 if it is not in the folder."""
        if name not in self.model_names():
            raise RequestError(f"no model {name!r} in the repository {self.root}", 404)
        self._wanted.add(name)
        snapshot = self.refresh([name])
        if name not in snapshot.models:
            attempts = [a.reason for (n, _), a in self._attempts.items() if n == name]
            detail = "; ".join(attempts) or "no version matches the version policy"
            raise RequestError(f"failed to load model {name!r}: {detail}", 400)

    def unload(self, name: str) -> None:
        """Stop serving model ``name`` (requests in flight finish on it)."""
        with self._lock:
            self._wanted.discard(name)
            models = {n: v for n, v in self.snapshot.models.items() if n != name}
            self.snapshot = Snapshot(models)

    # -- polling -------------------------------------------------------------------------

    def start_polling(self, interval: float) -> None:
        """Refresh every ``interval`` seconds in a daemon thread until :meth:`stop`."""
        if interval <= 0:
            raise ValueError(f"poll interval must be > 0, got {interval}")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._poll, args=(interval,), name="pomona-repository-poll", daemon=True
        )
        self._thread.start()

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.refresh()
            except Exception:  # a scan must never end the polling
                logger.exception("scanning the model repository %s failed", self.root)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _changed(old: Snapshot, new: Snapshot) -> bool:
    if old.models.keys() != new.models.keys():
        return True
    return any(
        old.models[n].keys() != new.models[n].keys()
        or any(old.models[n][v] is not new.models[n][v] for v in new.models[n])
        for n in new.models
    )


def _describe(snapshot: Snapshot) -> str:
    parts = [f"{name} {', '.join(snapshot.versions(name))}" for name in sorted(snapshot.models)]
    return "; ".join(parts) or "no models"
