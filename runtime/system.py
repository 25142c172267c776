"""What this process may use of the machine it runs on."""

from __future__ import annotations

import os

__all__ = ["available_cpus"]


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, which honours container limits.

    Falls back to ``os.cpu_count()`` where the platform has no affinity call (macOS,
    Windows), and to 1 when even that is unknown.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1
