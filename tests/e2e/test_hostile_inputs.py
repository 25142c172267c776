"""Hostile inputs and situations for the real ``pomona`` CLI, each in a subprocess.

Every case asserts the message, the exit status, that the input is untouched and that no
output or temporary file is left; the endless-input cases measure the peak memory of
the command (a memory bound, not a time limit).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import POMONA, SUBPROCESS_TIMEOUT, needs, run_pomona
from tests.hostile_models import make_wide_output_onnx
from tests.onnx_models import make_linear_onnx

ROWS = "temp,rainfall,humidity\n1,2,3\n4,5,6\n"
#: Peak memory (resident set) allowed for a command fed an endless line: the runtime
#: itself takes ~60-90 MiB; unbounded reading took gigabytes.
PEAK_MIB = 300
#: How much of a line without end the generators write before giving up (unbounded
#: reading would hold all of it).
ENDLESS_BYTES = 768 << 20


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    make_linear_onnx(tmp_path / "model.onnx")
    (tmp_path / "rows.csv").write_text(ROWS)
    return tmp_path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _one_error_line(stderr: str, *parts: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    for part in parts:
        assert part in lines[0], lines[0]


# -- lines without end -----------------------------------------------------------------------

# Run the command with stdin from a generator; report its exit status, stderr and the
# peak resident memory of the largest child (ru_maxrss of RUSAGE_CHILDREN, in KiB).
_MEASURE = """
import json, resource, subprocess, sys
generator, command, cwd = json.loads(sys.argv[1])
feed = subprocess.Popen([sys.executable, "-c", generator], stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL)
done = subprocess.run(command, stdin=feed.stdout, capture_output=True, text=True, cwd=cwd)
feed.kill()
feed.wait()
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": done.returncode, "stderr": done.stderr, "peak_kib": peak}))
"""


def _endless(first: str, filler: str) -> str:
    """Python code writing ``first``, then ``filler`` (no newline) up to ENDLESS_BYTES."""
    return (
        "import sys\n"
        f"sys.stdout.buffer.write({first.encode()!r})\n"
        f"block = {filler.encode()!r} * (1 << 20)\n"
        f"for _ in range({ENDLESS_BYTES} // len(block)):\n"
        "    sys.stdout.buffer.write(block)\n"
    )


def _measure(generator: str, args: list[str], cwd: Path) -> dict[str, object]:
    spec = json.dumps([generator, [*POMONA, *args], str(cwd)])
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, spec],
        capture_output=True,
        text=True,
        check=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize(
    ("first", "filler", "line"),
    [
        ('{"temp": 1, "rainfall": ', "1", 1),  # JSON Lines without a newline
        ("temp,rainfall,humidity\n1,2,", "1", 2),  # a CSV line without end
        ('temp,rainfall,humidity\n1,2,"', "x\n", 2),  # a quoted CSV field without end
    ],
    ids=["jsonl", "csv", "csv-quoted"],
)
def test_a_line_without_end_stops_at_the_limit_in_bounded_memory(
    folder: Path, first: str, filler: str, line: int
) -> None:
    before = _files(folder)
    fmt = "jsonl" if first.startswith("{") else "csv"
    result = _measure(
        _endless(first, filler), ["predict", "model.onnx", "-", "-o", f"out.{fmt}"], folder
    )
    assert result["rc"] == 1
    _one_error_line(
        str(result["stderr"]),
        f"<stdin>, line {line}: a line longer than 16 MiB",
        "--max-line-bytes",
    )
    peak_mib = int(str(result["peak_kib"])) / 1024
    assert peak_mib < PEAK_MIB, f"peak memory {peak_mib:.0f} MiB"
    assert _files(folder) == before  # no output, no temporary file


def test_dev_zero_as_json_lines_is_refused_in_bounded_memory(folder: Path) -> None:
    (folder / "zero.jsonl").symlink_to("/dev/zero")
    before = _files(folder)
    result = _measure("", ["predict", "model.onnx", "zero.jsonl", "-o", "out.csv"], folder)
    assert result["rc"] == 1
    _one_error_line(str(result["stderr"]), "zero.jsonl, line 1: binary data (a NUL byte)")
    assert int(str(result["peak_kib"])) / 1024 < PEAK_MIB
    assert _files(folder) == before


@pytest.mark.parametrize("size", ["small", "large"])  # csv module, and pyarrow where installed
def test_the_limit_is_an_option_and_names_the_line(folder: Path, size: str) -> None:
    rows = 1 if size == "small" else 60000
    body = "1,2,3\n" * rows + "1,2,3." + "0" * 5000 + "\n" + "4,5,6\n" * rows
    (folder / "long.csv").write_text("temp,rainfall,humidity\n" + body)
    before = _files(folder)
    args = ["predict", "model.onnx", "long.csv", "-o", "out.csv", "--max-line-bytes"]
    done = run_pomona(*args, "4096", cwd=folder)
    assert done.returncode == 1
    _one_error_line(
        done.stderr,
        f"long.csv, line {rows + 2}: a line longer than 4 KiB (4096 bytes), the limit; "
        "raise it with --max-line-bytes",
    )
    assert _files(folder) == before
    done = run_pomona(*args, "8192", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert (folder / "out.csv").read_text().count("\n") == 2 * rows + 2


def test_a_header_with_100k_columns(folder: Path) -> None:
    names = [f"c{i}" for i in range(100_000)] + ["temp", "rainfall", "humidity"]
    wide = ",".join(names) + "\n" + ",".join(["1"] * len(names)) + "\n"
    (folder / "wide.csv").write_text(wide)
    done = run_pomona("predict", "model.onnx", "wide.csv", "-o", "out.csv", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert (folder / "out.csv").read_text() == "apples,oranges\n2.375,-0.75\n"
    assert (folder / "wide.csv").read_text() == wide


# -- the output is the input -----------------------------------------------------------------


@pytest.mark.parametrize("how", ["same name", "another path", "symlink", "hard link"])
def test_the_output_may_not_be_the_input(folder: Path, how: str) -> None:
    output = {
        "same name": "rows.csv",
        "another path": "./sub/../rows.csv",
        "symlink": "link.csv",
        "hard link": "hard.csv",
    }[how]
    (folder / "sub").mkdir()
    if how == "symlink":
        (folder / "link.csv").symlink_to("rows.csv")
    if how == "hard link":
        os.link(folder / "rows.csv", folder / "hard.csv")
    before = _files(folder)
    done = run_pomona("predict", "model.onnx", "rows.csv", "-o", output, cwd=folder)
    assert done.returncode == 1
    _one_error_line(done.stderr, f"Error: {output}: is the input file rows.csv")
    assert _files(folder) == before


# -- signals ---------------------------------------------------------------------------------

_ENDLESS_ROWS = (
    "import sys\n"
    "sys.stdout.write('temp,rainfall,humidity\\n')\n"
    "while True:\n"
    "    sys.stdout.write('1,2,3\\n' * 10000)\n"
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_write_leaves_no_file(folder: Path, signum: int) -> None:
    before = _files(folder)
    with (
        subprocess.Popen(
            [sys.executable, "-c", _ENDLESS_ROWS],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        ) as feed,
        subprocess.Popen(
            [*POMONA, "predict", "model.onnx", "-", "-o", "out.csv"],
            stdin=feed.stdout,
            stderr=subprocess.PIPE,
            cwd=folder,
        ) as command,
    ):
        assert feed.stdout is not None and command.stderr is not None
        feed.stdout.close()
        try:
            temporary: list[Path] = []
            while not temporary and command.poll() is None:  # until it writes its output
                time.sleep(0.05)
                temporary = [p for p in folder.glob(".out.csv.*.tmp") if p.stat().st_size]
            assert temporary, command.stderr.read()
            command.send_signal(signum)
            _, stderr = command.communicate(timeout=SUBPROCESS_TIMEOUT)
        finally:
            command.kill()
            feed.kill()
    assert command.returncode == -signum  # ended by the signal: a shell shows 128 + signum
    assert stderr == b""
    assert _files(folder) == before  # no out.csv, no .out.csv.*.tmp


# -- the user's situations -------------------------------------------------------------------


def test_a_latin1_csv(folder: Path) -> None:
    (folder / "latin.csv").write_bytes(b"temp,rainfall,humidity,place\n1,2,3,M\xe1laga\n")
    before = _files(folder)
    done = run_pomona("predict", "model.onnx", "latin.csv", "-o", "out.csv", cwd=folder)
    assert done.returncode == 1
    _one_error_line(done.stderr, "latin.csv, line 2: not UTF-8 text (byte 0xe1)", "iconv")
    assert _files(folder) == before


@pytest.mark.parametrize(
    "args", [["predict", "model.onnx", "rows.csv"], ["info", "model.onnx"]], ids=["predict", "info"]
)
def test_stdout_to_a_full_disk(folder: Path, args: list[str]) -> None:
    before = _files(folder)
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [*POMONA, *args],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            cwd=folder,
            timeout=SUBPROCESS_TIMEOUT,
            check=False,
        )
    assert done.returncode == 1
    assert done.stderr == "Error: <stdout>: cannot write: No space left on device\n"
    assert _files(folder) == before


@pytest.mark.parametrize("rows", [2, 200_000])
def test_stdout_to_a_closed_pipe_is_one_error_line(folder: Path, rows: int) -> None:
    """Like ``pomona predict ... | head -c0``: one line that says why the output stopped."""
    (folder / "many.csv").write_text("temp,rainfall,humidity\n" + "1,2,3\n" * rows)
    before = _files(folder)
    with subprocess.Popen(
        [*POMONA, "predict", "model.onnx", "many.csv"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=folder,
    ) as command:
        assert command.stdout is not None and command.stderr is not None
        command.stdout.close()
        status = command.wait(timeout=SUBPROCESS_TIMEOUT)
        message = b"Error: <stdout>: the reader closed the pipe before all output was written\n"
        assert (status, command.stderr.read()) == (1, message)
    assert _files(folder) == before


def _without_read_override() -> None:
    """Drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so that even
    root cannot read a file with mode 000 (their numbers are 1 and 2; PR_CAPBSET_DROP is 24)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.parametrize("command", ["predict", "info", "serve"])
def test_an_unreadable_model(folder: Path, command: str) -> None:
    model = folder / "model.onnx"
    model.chmod(0)
    extra = {"predict": ["rows.csv", "-o", "out.csv"], "serve": ["--port", str(_free_port())]}
    args = [command, "model.onnx", *extra.get(command, [])]
    try:
        done = subprocess.run(
            [*POMONA, *args],
            capture_output=True,
            text=True,
            cwd=folder,
            preexec_fn=_without_read_override if os.geteuid() == 0 else None,
            timeout=SUBPROCESS_TIMEOUT,
            check=False,
        )
    finally:
        model.chmod(0o644)
    assert done.returncode == 1
    _one_error_line(done.stderr, "model.onnx: cannot read the model file: Permission denied")
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "rows.csv"]


def _free_port() -> int:
    """A free port: should a model wrongly load, the server it starts clashes with nothing."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_refuses_a_model_whose_output_is_not_what_it_declares(tmp_path: Path) -> None:
    needs("uvicorn")
    make_wide_output_onnx(tmp_path / "model.onnx")
    done = run_pomona("serve", "model.onnx", "--port", str(_free_port()), cwd=tmp_path)
    assert done.returncode == 1
    _one_error_line(
        done.stderr,
        "declares 2 target(s) (apples, oranges), but for one row the model returns float32 "
        "of shape [1, 3]",
    )
