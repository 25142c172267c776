"""The statistics extension: per model version, request counts and cumulative times.

``GET /v2/models/stats``, ``/v2/models/{name}/stats`` and
``/v2/models/{name}/versions/{v}/stats`` answer in the shape Triton uses (what
``tritonclient``'s ``get_inference_statistics`` reads)::

    {"model_stats": [{"name": ..., "version": ..., "last_inference": <ms since epoch>,
                      "inference_count": <rows>, "execution_count": <requests>,
                      "inference_stats": {"success": {"count": n, "ns": t},
                                          "fail": {"count": n, "ns": t}}}]}

REST and gRPC requests count alike. Counters live as long as the server; a version
unloaded and loaded again keeps its counts. The Prometheus metrics stay as they are.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Statistics", "VersionStats"]


@dataclass
class VersionStats:
    """The counters of one model version."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    rows: int = 0
    last_inference_ms: int = 0

    def as_dict(self, name: str, version: str) -> dict[str, Any]:
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.rows,
            "execution_count": self.success_count,
            "inference_stats": {
                "success": {"count": self.success_count, "ns": self.success_ns},
                "fail": {"count": self.fail_count, "ns": self.fail_ns},
            },
        }


class Statistics:
    """Counters by ``(model, version)``; safe to update from the REST loop and gRPC threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, str], VersionStats] = {}

    def record(self, name: str, version: str, ns: int, rows: int, ok: bool) -> None:
        """Count one request of ``rows`` rows that took ``ns`` nanoseconds."""
        with self._lock:
            stats = self._stats.get((name, version))
            if stats is None:
                stats = self._stats[(name, version)] = VersionStats()
            if ok:
                stats.success_count += 1
                stats.success_ns += ns
                stats.rows += rows
            else:
                stats.fail_count += 1
                stats.fail_ns += ns
            stats.last_inference_ms = time.time_ns() // 1_000_000

    def report(self, served: dict[str, list[str]]) -> dict[str, Any]:
        """``{"model_stats": [...]}`` for the ``served`` ``{name: [versions]}``."""
        with self._lock:
            rows = [
                self._stats.get((name, version), VersionStats()).as_dict(name, version)
                for name in sorted(served)
                for version in served[name]
            ]
        return {"model_stats": rows}
