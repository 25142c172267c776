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

What is served is one immutable :class:`~.snapshot.Snapshot` ``{name -> {version -> model}}``.
:meth:`ModelRepository.refresh` builds the next one off to the side (reusing the
versions that did not change) and replaces the reference in one assignment: a request
takes the snapshot once and finishes on the version it started with, and a version
that fails to load never replaces the one being served.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pomona.runtime.errors import ArtifactError
from pomona.runtime.serve.codec import RequestError
from pomona.runtime.serve.snapshot import (
    VERSION_NAME,
    LoadedModel,
    Loader,
    PendingError,
    Snapshot,
    VersionPolicy,
    load_version,
    manifest_stamp,
)

__all__ = ["ModelRepository", "RepositoryOptions"]

logger = logging.getLogger("pomona.serve")

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class RepositoryOptions:
    """How ``pomona serve REPO`` serves a repository (its command-line options)."""

    #: ``latest``, ``latest:N``, ``all`` or ``specific:V[,V...]``.
    version_policy: str = "latest"
    #: ``none``: every model in the folder; ``explicit``: those loaded through the API.
    model_control: Literal["none", "explicit"] = "none"
    #: Models to load at start with explicit model control.
    load_models: tuple[str, ...] = ()
    #: Seconds between scans for new versions (0: no polling).
    poll: float = 0.0

    def open(self, root: str | os.PathLike[str], loader: Loader) -> ModelRepository:
        """The repository, scanned once; polling (if asked) starts with :meth:`start`."""
        return ModelRepository(
            root,
            loader=loader,
            policy=VersionPolicy.parse(self.version_policy),
            explicit=self.model_control == "explicit",
            startup_models=self.load_models,
        )


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
        root: str | os.PathLike[str],
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
            if VERSION_NAME.fullmatch(entry.name) and entry.is_dir():
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
        stamp = manifest_stamp(folder)
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
            except Exception:  # a scan must never end the polling  # pragma: no cover
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
