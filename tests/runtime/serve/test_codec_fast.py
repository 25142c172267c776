"""Each fast path of the codec against the reference reader, on generated requests.

Every generated request goes through ``decode_request`` (fast paths first) and
``decode_reference``; both must give the same features, id and flags, or the same error.
Each test also counts the requests its fast path actually took, and wants a fair share.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pomona.runtime.serve import codec_fast
from pomona.runtime.serve.codec import decode_reference
from tests.runtime.serve.test_codec import N_FEATURES, needs_simdjson, outcome

_EDGES = [0, 1, 0.0, 1.0, -0.0, 3.4e38, 3.5e38, -3.5e38, 5e-324, 2**53 + 1, 2**63, 2**64 - 1]
_plain_number = st.one_of(
    st.floats(-1e6, 1e6),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**53), max_value=2**53),
)
_wild_number = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.sampled_from(_EDGES),
)
_not_a_number = st.sampled_from([True, False, None, "1", [1.0], {"a": 1}, []])


class Taken:
    """Counts the requests on which a fast-path function of ``codec_fast`` answered."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.calls = 0
        original = getattr(codec_fast, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if result is not None:  # read_flat_numbers declines with None, the others raise
                self.calls += 1
            return result

        monkeypatch.setattr(codec_fast, name, counted)


def _agree_with_reference(
    taken: Taken, cases: st.SearchStrategy[tuple[bytes, int | None]], examples: int = 150
) -> float:
    """Check every generated request against the reference; the share the fast path took."""
    tally = {"requests": 0, "taken": 0}

    @given(case=cases)
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None)
    def check(case: tuple[bytes, int | None]) -> None:
        body, header_length = case
        before = taken.calls
        fast = outcome(body, header_length)
        tally["requests"] += 1
        tally["taken"] += taken.calls > before
        assert fast == outcome(body, header_length, decode_reference), body[:300]

    check()
    return tally["taken"] / tally["requests"]


@st.composite
def _values(draw: st.DrawFn, count: int) -> list[object]:
    """``count`` numbers, now and then with an extreme one or one that is not a number."""
    values: list[object] = draw(st.lists(_plain_number, min_size=count, max_size=count))
    for odd in (_wild_number, _wild_number, _not_a_number):
        if values and draw(st.integers(0, 7)) == 0:
            values[draw(st.integers(0, count - 1))] = draw(odd)
    return values


@st.composite
def _json_request(draw: st.DrawFn, rows: st.SearchStrategy[int], nested: bool) -> tuple:
    n_rows = draw(rows)
    values = draw(_values(n_rows * N_FEATURES))
    data: object = values
    if nested:
        data = [values[i : i + N_FEATURES] for i in range(0, len(values), N_FEATURES)]
    shape = [n_rows, N_FEATURES]
    mistake = draw(st.integers(0, 9))
    if mistake == 0:
        shape = [n_rows + 1, N_FEATURES]
    elif mistake == 1 and values:
        data = values[:-1] if not nested else [*data[:-1], values[:2]]  # type: ignore[index]
    datatype = draw(st.sampled_from(["FP32", "FP32", "FP32", "FP64", "INT64"]))
    tensor = {"name": "features", "shape": shape, "datatype": datatype, "data": data}
    doc: dict[str, object] = {
        "id": draw(st.sampled_from(["r1", "", "r2", 'a"é'])),
        "inputs": [tensor],
    }
    if draw(st.booleans()):
        doc["parameters"] = {"binary_data_output": draw(st.booleans())}
    return json.dumps(doc).encode(), None


def test_small_flat_data_path_agrees_with_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = Taken(monkeypatch, "_small_flat")
    cases = _json_request(st.integers(1, codec_fast.SMALL // N_FEATURES), nested=False)
    assert _agree_with_reference(taken, cases) >= 0.3


def test_large_flat_data_path_agrees_with_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec_fast, "USE_SIMDJSON", False)
    taken = Taken(monkeypatch, "_large_flat")
    first = codec_fast.SMALL // N_FEATURES + 1
    cases = _json_request(st.integers(first, first + 120), nested=False)
    assert _agree_with_reference(taken, cases, examples=80) >= 0.3


def test_nested_rows_path_agrees_with_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec_fast, "USE_SIMDJSON", False)
    taken = Taken(monkeypatch, "_flatten_rows")
    cases = _json_request(st.integers(1, 150), nested=True)
    assert _agree_with_reference(taken, cases, examples=100) >= 0.2


@needs_simdjson
def test_simdjson_path_agrees_with_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec_fast, "SIMDJSON_MIN", 0)
    taken = Taken(monkeypatch, "read_flat_numbers")
    cases = _json_request(st.integers(1, 300), nested=False)
    assert _agree_with_reference(taken, cases, examples=100) >= 0.2


_RAW_DTYPES = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "UINT8": "u1"}


@st.composite
def _binary_request(draw: st.DrawFn) -> tuple[bytes, int | None]:
    rows = draw(st.integers(0, 40))
    datatype = draw(st.sampled_from(sorted(_RAW_DTYPES)))
    raw = draw(st.binary(min_size=rows * 12, max_size=rows * 12))
    values = np.frombuffer(raw, dtype="u1").astype(_RAW_DTYPES[datatype])
    payload = values.tobytes()
    size = len(payload)
    mistake = draw(st.integers(0, 7))
    if mistake == 0:
        size += 1
    elif mistake == 1:
        payload += b"x"
    tensor = {
        "name": "features",
        "shape": [rows, N_FEATURES],
        "datatype": datatype,
        "parameters": {"binary_data_size": size},
    }
    doc = {"inputs": [tensor], "outputs": [{"name": "predictions"}]}
    head = json.dumps(doc).encode()
    declared = len(head) + (1 if mistake == 2 else 0)
    return head + payload, declared


def test_binary_data_path_agrees_with_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = Taken(monkeypatch, "read_json")
    assert _agree_with_reference(taken, _binary_request()) >= 0.5


def test_fast_paths_decline_what_only_the_reference_may_answer() -> None:
    f32 = np.dtype("<f4")
    for data, rows in (
        ([1, 2, True], 1),  # booleans
        ([[1, 2, 3], [4, 5]], 2),  # ragged
        ([1e39, 2, 3], 1),  # beyond float32
        ([1, 2, 3], 2),  # too few values
        ([], 0),  # no rows
        ("1,2,3", 1),  # not a list
    ):
        with pytest.raises(codec_fast.Declined):
            codec_fast.tensor_values(data, f32, rows, N_FEATURES)
    with pytest.raises(codec_fast.Declined):
        codec_fast.tensor_values([1, 2, 3], np.dtype("<i4"), 1, N_FEATURES)  # integers
    with pytest.raises(codec_fast.Declined):
        codec_fast.read_json(b"{", json_only=True)
