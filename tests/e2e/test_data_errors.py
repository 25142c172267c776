"""The same bad data file gets the same message from ``pomona train``, ``export`` and ``predict``.

Each command runs as a real subprocess. ``train`` and ``predict`` refuse the file with
one ``Error:`` line; ``export`` (whose checkpoint was trained on a good version of the
file) warns with the same text and checks the export on random rows instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_pomona

HEADER = b"temp,rainfall,humidity,apples,oranges\n"
GOOD = b"73,67,43,56,70\n91,88,64,81,101\n87,134,58,119,133\n102,43,37,22,37\n"
TIMEOUT = 600  # seconds: a hung command fails the test instead of hanging the run

# case -> (contents of the data file, a part of the expected message)
BAD_FILES = {
    "empty cell": (HEADER + GOOD + b"73,,43,56,70\n", "line 6, column 'rainfall': empty cell"),
    "non-number": (HEADER + GOOD + b"73,lots,43,56,70\n", "line 6, column 'rainfall': 'lots'"),
    "missing column": (
        b"temp,rainfall,apples,oranges\n73,67,56,70\n",
        "line 1: no column 'humidity' in the header",
    ),
    "duplicate column": (
        b"temp,rainfall,humidity,temp,apples,oranges\n73,67,43,73,56,70\n",
        "line 1: column 'temp' appears 2 times",
    ),
    "ragged row": (HEADER + GOOD + b"73,67,43\n", "line 6: 3 fields, but the header has 5"),
    "non-UTF-8": (
        b"temp,rainfall,humidity,apples,oranges,place\n73,67,43,56,70,x\n91,88,64,81,101,Mal\xe9\n",
        "line 3: not UTF-8 text (byte 0xe9)",
    ),
    "empty file": (b"", "the file is empty"),
}

_WARNING_END = "; checking the export on random rows only"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A checkpoint and model trained on a good ``data.csv``; returns (folder, data file)."""
    folder = tmp_path_factory.mktemp("data-errors")
    data = folder / "data.csv"
    data.write_bytes(HEADER + GOOD * 3)
    out = folder / "artifacts"
    done = run_pomona(
        "train", "--data", data, "--out", out, "--epochs", "2", "--val-fraction", "0",
        timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = run_pomona("export", "--checkpoint", out / "checkpoint.pt", timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    return out, data


def _error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    return lines[0].removeprefix("Error: ")


def _warning(stderr: str) -> str:
    warnings = [line for line in stderr.splitlines() if line.startswith("Warning: ")]
    assert len(warnings) == 1, stderr
    assert warnings[0].endswith(_WARNING_END), stderr
    return warnings[0].removeprefix("Warning: ").removesuffix(_WARNING_END)


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_every_command_words_a_bad_file_the_same(case: str, trained: tuple[Path, Path]) -> None:
    out, data = trained
    contents, expected = BAD_FILES[case]
    good = data.read_bytes()
    data.write_bytes(contents)
    try:
        train = run_pomona("train", "--data", data, "--out", out.parent / "unused", timeout=TIMEOUT)
        export = run_pomona(
            "export", "--checkpoint", out / "checkpoint.pt", "--out", out.parent / "export",
            timeout=TIMEOUT,
        )  # fmt: skip
        output = out.parent / "predictions.csv"
        predict = run_pomona("predict", out / "model.onnx", data, "-o", output, timeout=TIMEOUT)
    finally:
        data.write_bytes(good)
    assert train.returncode == 1 and predict.returncode == 1
    assert export.returncode == 0, export.stderr
    message = _error(train.stderr)
    assert message.startswith(f"{data}") and expected in message, message
    assert _error(predict.stderr) == message
    assert _warning(export.stderr) == message
    assert "random rows (training data not found)" in export.stderr
    assert not output.exists()
    assert not (out.parent / "unused").exists()
