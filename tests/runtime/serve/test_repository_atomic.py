"""Loading a model while ``pomona export`` replaces it in place never fails.

An export moves ``model.onnx`` into the folder just before ``manifest.json``, so a
reader can find the new model beside the old manifest; the loader looks again.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from pomona.runtime.artifacts import MANIFEST_FILE, ONNX_FILE
from pomona.runtime.errors import ArtifactError
from pomona.runtime.predictor import Predictor
from tests.runtime.serve.repo_cases import write_version

LOADS = 300


def _exports(folder: Path, sources: list[Path], stop: threading.Event) -> None:
    """Publish into the folder again and again as an export does: stage, then replace
    the model and the manifest one after the other, the manifest last."""
    turn = 0
    while not stop.wait(0.01):  # an export takes seconds; here 10 ms
        source = sources[turn % len(sources)]
        for name in (ONNX_FILE, MANIFEST_FILE):
            (folder / f".{name}.staged").write_bytes((source / name).read_bytes())
        for name in (ONNX_FILE, MANIFEST_FILE):
            os.replace(folder / f".{name}.staged", folder / name)
        turn += 1


def test_loads_during_in_place_exports_never_see_a_half_published_folder(
    tmp_path: Path,
) -> None:
    sources = [write_version(tmp_path / f"v{v}", "apples", v) for v in (1, 2)]
    folder = write_version(tmp_path / "out", "apples", 1)
    stop = threading.Event()
    writer = threading.Thread(target=_exports, args=(folder, sources, stop))
    writer.start()
    failures = []
    try:
        for _ in range(LOADS):
            try:
                Predictor(folder / ONNX_FILE, intra_op_threads=1)
            except ArtifactError as err:
                failures.append(str(err))
    finally:
        stop.set()
        writer.join()
    assert failures == [], failures[:3]
