"""pyarrow and the standard library read the same values and write the same text.

Large inputs are parsed with pyarrow, small ones (and every input without pyarrow) with
the ``csv`` module; here the size threshold is lowered to 0 so that the same small file
goes through both. Counters prove the pyarrow path really ran.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pomona.runtime.data import Spec, csv_read, format_float32, open_batches, predict_file
from pomona.runtime.data import source as data_source
from pomona.runtime.data.csv_write import CsvWriter
from pomona.runtime.errors import DataError
from tests.conftest import needs

pa = needs("pyarrow")
pc = needs("pyarrow.compute")

FLOAT32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
ARRAYS = hnp.arrays(
    np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40), elements=FLOAT32
)


def _read(path: Path, names: list[str], *, arrow: bool, calls: Counter[str]) -> np.ndarray:
    """Every row of ``path`` through one path; counts the blocks pyarrow parsed."""
    parse = csv_read._ArrowParser.__call__
    fallback = csv_read.parse_block

    def counted_parse(self: csv_read._ArrowParser, block: object, row: int) -> object:
        calls["arrow"] += 1
        return parse(self, block, row)  # type: ignore[arg-type]

    def counted_fallback(*args: object) -> object:
        calls["csv"] += 1
        return fallback(*args)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data_source, "SMALL_INPUT", 0 if arrow else 1 << 40)
        patch.setattr(csv_read._ArrowParser, "__call__", counted_parse)
        patch.setattr(csv_read, "parse_block", counted_fallback)
        with open_batches(path, Spec.of(names)) as (_, _, batches):
            return np.concatenate([b.values for b in batches])


def _csv(values: np.ndarray, names: list[str], *, arrow: bool) -> bytes:
    sink = io.BytesIO()
    writer = CsvWriter(sink, [], names, arrow=arrow)
    writer.write({}, values)
    return sink.getvalue()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=ARRAYS)
def test_both_paths_read_and_write_the_same(values: np.ndarray, tmp_path: Path) -> None:
    names = [f"c{j}" for j in range(values.shape[1])]
    path = tmp_path / "values.csv"
    path.write_bytes(_csv(values, names, arrow=False))
    calls: Counter[str] = Counter()
    read = {arrow: _read(path, names, arrow=arrow, calls=calls) for arrow in (True, False)}
    assert calls["arrow"] >= 1, "the pyarrow path did not run"
    assert calls["csv"] == 1, "only the standard-library read should use the csv module"
    for got in read.values():  # bit for bit, so -0.0 and 0.0 differ
        np.testing.assert_array_equal(got.view(np.uint32), values.view(np.uint32))
    assert _csv(values, names, arrow=True) == _csv(values, names, arrow=False)


@settings(max_examples=200, deadline=None)
@given(values=hnp.arrays(np.float32, st.integers(1, 50), elements=FLOAT32))
def test_float_text_is_pyarrows_shortest_text(values: np.ndarray) -> None:
    assert format_float32(values) == pc.cast(pa.array(values), pa.string()).to_pylist()
    assert np.array_equal(np.array(format_float32(values), dtype=np.float32), values)


@pytest.mark.parametrize("arrow", [True, False])
@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("1_000", "'1_000' is not a number"),
        ("", "empty cell, expected a number"),
        ("   ", "empty cell, expected a number"),
        ("nan", "'nan' is not a finite float32 number"),
        ("1e39", "'1e39' is not a finite float32 number"),
    ],
)
def test_both_paths_refuse_the_same_cells(
    tmp_path: Path, arrow: bool, cell: str, message: str
) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("a,b\n1,2\n\n3," + cell + "\n5,6\n")
    with pytest.raises(DataError, match=rf"rows\.csv, line 4, column 'b': {message}"):
        _read(path, ["a", "b"], arrow=arrow, calls=Counter())


def test_output_text_does_not_depend_on_the_input_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Double:
        feature_names = ("x",)
        target_names = ("y",)

        def predict(self, x: np.ndarray) -> np.ndarray:
            return x * 2

    source = tmp_path / "in.csv"
    source.write_text("id,x\n" + "".join(f"r{i},{i}.50\n" for i in range(1000)) + 'q,"4.25"\n')
    for keep, first in ((["id"], b"r0,1"), (["id", "x"], b"r0,0.50,1")):
        outputs = []
        for small in (0, 1 << 40):
            monkeypatch.setattr(data_source, "SMALL_INPUT", small)
            out = tmp_path / f"out-{small}.csv"
            assert predict_file(Double(), str(source), str(out), keep=keep, batch_size=300) == 1001
            outputs.append(out.read_bytes())
        assert outputs[0] == outputs[1]
        assert outputs[0].splitlines()[:2] == [",".join([*keep, "y"]).encode(), first]
