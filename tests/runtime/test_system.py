import os

import pytest

from pomona.runtime.system import available_cpus


def test_available_cpus_follows_the_affinity_mask() -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("this platform has no CPU affinity call")
    assert available_cpus() == len(os.sched_getaffinity(0))


def test_available_cpus_falls_back_to_the_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert available_cpus() == 1
