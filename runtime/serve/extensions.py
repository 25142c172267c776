"""The answers of the model repository and statistics extensions, and versioned metadata.

Plain functions of a :class:`~.snapshot.Snapshot` (and the repository, the counters), so
the app's handlers stay one line each and gRPC could answer from the same place.
"""

from __future__ import annotations

from typing import Any

from pomona.runtime.serve.codec import RequestError
from pomona.runtime.serve.model_info import model_metadata
from pomona.runtime.serve.repository import ModelRepository
from pomona.runtime.serve.snapshot import Snapshot
from pomona.runtime.serve.stats import Statistics

__all__ = ["repository_action", "repository_index", "stats_report", "version_metadata"]


def version_metadata(snapshot: Snapshot, name: str, version: str | None) -> dict[str, Any]:
    """Model metadata of one version (the latest ready without ``version``), listing all."""
    model = snapshot.get(name, version)
    meta = model_metadata(model.predictor, name, model.version, model.digest)
    meta["versions"] = snapshot.versions(name)
    return meta


def stats_report(
    snapshot: Snapshot, stats: Statistics, name: str | None, version: str | None
) -> dict[str, Any]:
    """``{"model_stats": [...]}``: every version served, one model's, or one version's."""
    if name is None:
        served = {n: snapshot.versions(n) for n in snapshot.models}
    else:
        model = snapshot.get(name, version)
        served = {name: [model.version] if version else snapshot.versions(name)}
    return stats.report(served)


def repository_index(
    snapshot: Snapshot, repository: ModelRepository | None
) -> list[dict[str, str]]:
    """Every version with its state; a model file's one version is READY."""
    if repository is not None:
        return repository.index()
    return [
        {"name": name, "version": version, "state": "READY"}
        for name in snapshot.models
        for version in snapshot.versions(name)
    ]


def repository_action(repository: ModelRepository | None, action: str, name: str) -> None:
    """Load or unload model ``name``; 400 unless model control is explicit."""
    if repository is None or not repository.explicit:
        raise RequestError(
            f"cannot {action} models: model control is off; "
            "start the server on a model repository with --model-control explicit",
            400,
        )
    if action == "load":
        repository.load(name)
    else:
        repository.unload(name)
