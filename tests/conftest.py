"""Shared fixtures: the repository root, a runner for the real ``pomona`` CLI, and
:func:`needs` for tests that use an optional extra."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
POMONA = [sys.executable, "-m", "pomona.runtime.cli"]

# A hang guard, not a speed limit: a command that hangs fails after this many seconds
# instead of stalling the suite. Callers may pass their own ``timeout``.
SUBPROCESS_TIMEOUT = 600.0

# Set by ``make pytest``, whose environment installs every extra: there a missing
# optional module is a broken install and fails the test instead of skipping it.
ALL_EXTRAS_VARIABLE = "POMONA_ALL_EXTRAS"


def run_pomona(*args: str | os.PathLike[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``pomona ARGS`` in a subprocess and capture its text output."""
    kwargs.setdefault("timeout", SUBPROCESS_TIMEOUT)
    return subprocess.run(  # type: ignore[call-overload,no-any-return]
        [*POMONA, *map(str, args)], capture_output=True, text=True, check=False, **kwargs
    )


def needs(module: str) -> Any:
    """Import ``module`` (an optional extra's) for a test, and return it.

    When it cannot be imported the test is skipped with the reason, unless
    ``POMONA_ALL_EXTRAS=1`` is set (every extra is meant to be installed): then it fails.
    Works inside a test and at module level.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        reason = f"{module} cannot be imported ({err})"
        if os.environ.get(ALL_EXTRAS_VARIABLE) == "1":
            pytest.fail(f"{reason}, but {ALL_EXTRAS_VARIABLE}=1 says every extra is installed")
        pytest.skip(reason, allow_module_level=True)


@pytest.fixture
def pomona() -> object:
    return run_pomona
