"""Publishing a version again under the same number: the folder is swapped, never missing."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from pomona.export import triton
from pomona.export.triton import place_entry, stage_entry


def _publish(repo: Path, content: bytes) -> Path:
    staged = stage_entry(repo, "apples", {"model.onnx": content}, 3, 2)
    try:
        place_entry(staged, repo / "apples", 4)
    finally:
        shutil.rmtree(staged)
    return repo / "apples" / "4"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_a_version_published_again_is_there_at_every_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _publish(tmp_path, b"old")
    seen = []

    def replace(src: Any, dst: Any) -> None:
        os.rename(src, dst)
        seen.append(target.is_dir())

    monkeypatch.setattr(triton.os, "replace", replace)
    assert _publish(tmp_path, b"new") == target
    assert (target / "model.onnx").read_bytes() == b"new"
    assert seen and all(seen)  # after every rename the version folder was there
    assert sorted(p.name for p in (tmp_path / "apples").iterdir()) == ["4", "config.pbtxt"]


def test_without_the_exchange_it_is_replaced_by_two_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _publish(tmp_path, b"old")
    monkeypatch.setattr(triton, "_exchange", lambda a, b: False)
    _publish(tmp_path, b"new")
    assert (target / "model.onnx").read_bytes() == b"new"
    assert sorted(p.name for p in (tmp_path / "apples").iterdir()) == ["4", "config.pbtxt"]
