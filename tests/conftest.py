"""Shared fixtures: the repository root and a runner for the real ``pomona`` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
POMONA = [sys.executable, "-m", "pomona.runtime.cli"]


def run_pomona(*args: str | os.PathLike[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run ``pomona ARGS`` in a subprocess and capture its text output."""
    return subprocess.run(  # type: ignore[call-overload,no-any-return]
        [*POMONA, *map(str, args)], capture_output=True, text=True, check=False, **kwargs
    )


@pytest.fixture
def pomona() -> object:
    return run_pomona
