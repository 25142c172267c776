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

    def add(self, other: VersionStats) -> None:
        self.success_count += other.success_count
        self.success_ns += other.success_ns
        self.fail_count += other.fail_count
        self.fail_ns += other.fail_ns
        self.rows += other.rows
        self.last_inference_ms = max(self.last_inference_ms, other.last_inference_ms)

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
    """Counters by ``(model, version)``, updated without a lock: each thread (the REST event
    loop, the gRPC one) counts in its own table, and a report sums the tables."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # only to register a thread's table and to report
        self._tables: list[dict[tuple[str, str], VersionStats]] = []
        self._local = threading.local()

    def _table(self) -> dict[tuple[str, str], VersionStats]:
        table: dict[tuple[str, str], VersionStats] = {}
        with self._lock:
            self._tables.append(table)
        self._local.table = table
        return table

    def record(self, name: str, version: str, ns: int, rows: int, ok: bool) -> None:
        """Count one request of ``rows`` rows that took ``ns`` nanoseconds."""
        table = getattr(self._local, "table", None) or self._table()
        stats = table.get((name, version))
        if stats is None:
            stats = table[(name, version)] = VersionStats()
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
            tables = list(self._tables)
        rows = []
        for name in sorted(served):
            for version in served[name]:
                total = VersionStats()
                for table in tables:
                    part = table.get((name, version))
                    if part is not None:
                        total.add(part)
                rows.append(total.as_dict(name, version))
        return {"model_stats": rows}
