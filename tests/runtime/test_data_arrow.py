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
