"""Numbers out of pyarrow arrays: a view of the buffer, equal to pyarrow's own conversion."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pomona.runtime.data import read_numbers
from pomona.runtime.data.numbers import arrow_values
from pomona.runtime.errors import DataError
from tests.conftest import REPO, SUBPROCESS_TIMEOUT, needs

pa = needs("pyarrow")
pq = needs("pyarrow.parquet")

TYPES = ["int8", "int16", "int32", "int64", "uint8", "uint32", "uint64",
         "float16", "float32", "float64"]  # fmt: skip
NAMES = ["temp", "rainfall", "humidity"]


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(TYPES),
    size=st.integers(0, 40),
    data=st.data(),
)
def test_arrow_values_are_what_to_numpy_gives(kind: str, size: int, data: st.DataObject) -> None:
    """The fast path (a view of the values buffer) against pyarrow's ``to_numpy``."""
    dtype = np.dtype(kind)
    raw = data.draw(st.binary(min_size=size * dtype.itemsize, max_size=size * dtype.itemsize))
    values = np.frombuffer(raw, dtype=dtype)
    if dtype.kind == "f":
        values = np.nan_to_num(values)  # NaN payloads need not survive a comparison
    array = pa.array(values)
    start = data.draw(st.integers(0, size))
    length = data.draw(st.integers(0, size - start))
    for part in (array, array.slice(start, length)):
        got = arrow_values(part)
        assert got.dtype == dtype
        assert np.array_equal(got, part.to_numpy(zero_copy_only=False))


def test_reading_parquet_imports_no_pandas_and_uses_jemalloc(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    columns = {"temp": pa.array([1.5, 2.0], pa.float32()), "rainfall": [3, 4],
               "humidity": pa.array([5.0, 6.25], pa.float64())}  # fmt: skip
    pq.write_table(pa.table(columns), path)
    script = (
        "import json, sys\n"
        "from pomona.runtime.data import read_numbers\n"
        f"values = read_numbers({str(path)!r}, {NAMES!r})\n"
        "import pyarrow as pa\n"
        "pool = pa.default_memory_pool().backend_name\n"
        "print(json.dumps([values.tolist(), 'pandas' in sys.modules, pool]))\n"
    )
    output = subprocess.check_output(
        [sys.executable, "-c", script], text=True, cwd=REPO, timeout=SUBPROCESS_TIMEOUT
    )
    values, pandas_loaded, pool = json.loads(output)
    assert values == [[1.5, 3.0, 5.0], [2.0, 4.0, 6.25]]
    assert not pandas_loaded
    assert pool == pa.jemalloc_memory_pool().backend_name  # ~50 MiB less than mimalloc's


_SIGNAL_IN_A_READ = """
import io, json, signal
from pomona.runtime.data import read_numbers
read_numbers(PATH, ["temp", "rainfall", "humidity"])  # large enough to be read by pyarrow
import pyarrow as pa, pyarrow.csv as pacsv

class SignalledFile(io.RawIOBase):  # sends SIGTERM to the process from inside the read
    def __init__(self):
        self.rest = b"a,b\\n" + b"1,2\\n" * 1000
    def readable(self):
        return True
    def readinto(self, buffer):
        if self.rest and len(self.rest) > 4000:
            signal.raise_signal(signal.SIGTERM)
        n = min(len(buffer), len(self.rest))
        buffer[:n], self.rest = self.rest[:n], self.rest[n:]
        return n

handled = []
signal.signal(signal.SIGTERM, lambda signum, frame: handled.append(signum))
table = pacsv.read_csv(io.BufferedReader(SignalledFile(), 64))
print(json.dumps([table.num_rows, len(handled)]))
"""


def test_a_signal_during_an_arrow_read_goes_to_python(tmp_path: Path) -> None:
    """Once Pomona's readers have set pyarrow up, pyarrow leaves SIGTERM to Python's handler.

    pyarrow's own handler would cancel the read, or lose the signal when it lands as a read
    ends: ``pomona predict`` then went on reading after SIGTERM, about 1 run in 12."""
    path = tmp_path / "rows.csv"
    path.write_text("temp,rainfall,humidity\n" + "1.5,2,3\n" * 200_000)  # > SMALL_INPUT
    script = _SIGNAL_IN_A_READ.replace("PATH", repr(str(path)))
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [1000, 1]  # read to the end, and the handler ran once


@pytest.mark.parametrize(
    ("column", "shown"),
    [
        (pa.array([1.0, float("nan")], pa.float32()), "nan"),
        (pa.array([1.0, float("-inf")], pa.float64()), "-inf"),
        (pa.array([1.0, 1e39], pa.float64()), "1e+39"),  # finite, but not as a float32
    ],
)
def test_parquet_values_must_be_finite_float32(tmp_path: Path, column: object, shown: str) -> None:
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"temp": [1.0, 2.0], "rainfall": column, "humidity": [3, 4]}), path)
    where = r"rows\.parquet, row 2, column 'rainfall'"
    expected = rf"{where}: '{re.escape(shown)}' is not a finite float32 number"
    with pytest.raises(DataError, match=expected):
        read_numbers(path, NAMES)
