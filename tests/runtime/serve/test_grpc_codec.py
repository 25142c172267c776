"""``ModelInfer``'s fast path (kept plans, bytes in and out) against its reference path.

Each generated request is answered twice by the servicer: once by the reference path
(parse, decode, predict, encode), which keeps a plan for the request's head, then with
other values under the same head, by the fast path. Both must give the same bytes, or
the same status code and message. The tests count the answers the fast path gave.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pomona.runtime.serve.grpc_codec import split_raw
from pomona.runtime.serve.grpc_server import InferenceServicer
from pomona.runtime.serve.proto import open_inference_grpc_pb2 as pb
from pomona.runtime.serve.snapshot import FixedModel, load_predictor
from pomona.runtime.serve.stats import Statistics
from tests.onnx_models import CROP_BIAS, CROP_WEIGHTS, make_linear_onnx, reference_predictions

_WIRE = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "UINT8": "u1"}


class Aborted(Exception):
    pass


class Context:
    """What the handlers use of a gRPC servicer context: ``abort`` raises."""

    def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise Aborted(code, message)


class Source:
    def __init__(self, model: FixedModel) -> None:
        self.snapshot = model.snapshot


def _source(tmp_path: Path) -> Source:
    path = make_linear_onnx(tmp_path / "model.onnx")
    return Source(FixedModel(load_predictor(path), "crops"))


def _request(rows: int, datatype: str, version: str, request_id: str, outputs: bool) -> Any:
    request = pb.ModelInferRequest(model_name="crops", model_version=version, id=request_id)
    request.inputs.add(name="features", datatype=datatype, shape=[rows, 3])
    if outputs:
        request.outputs.add(name="predictions")
    return request


def _payload(request: Any, values: np.ndarray) -> bytes:
    request = pb.ModelInferRequest.FromString(request.SerializeToString())
    del request.raw_input_contents[:]
    request.raw_input_contents.append(values.tobytes())
    data: bytes = request.SerializeToString()
    return data


def _answer(answer: Any, *args: Any) -> Any:
    try:
        return answer(*args)
    except Aborted as aborted:
        return aborted.args


_values = st.one_of(
    st.floats(-1e6, 1e6), st.sampled_from([0.0, -0.0, 3.5e38, float("nan"), float("inf")])
)
_cases = st.tuples(
    st.integers(1, 4),
    st.sampled_from(sorted(_WIRE)),
    st.sampled_from(["", "1", "2"]),
    st.sampled_from(["", "7", "a-long-request-id"]),
    st.booleans(),
    st.lists(_values, min_size=24, max_size=24),
)


def test_the_fast_path_answers_as_the_reference_does(tmp_path: Path) -> None:
    servicer = InferenceServicer(_source(tmp_path), Statistics())
    tally = {"answers": 0, "fast": 0}

    @given(case=_cases)
    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    def check(case: tuple[int, str, str, str, bool, list[float]]) -> None:
        rows, datatype, version, request_id, outputs, numbers = case
        request = _request(rows, datatype, version, request_id, outputs)
        with np.errstate(invalid="ignore", over="ignore"):
            values = np.array(numbers[: rows * 3 * 2], dtype=np.float64).astype(_WIRE[datatype])
        first, second = values[: rows * 3], values[rows * 3 : rows * 6]
        answers = []
        for part in (first, second):
            payload = _payload(request, part)
            head = split_raw(payload)
            assert head is not None
            fast = servicer._plans.get(head[0]) is not None
            answered = _answer(servicer.ModelInfer, payload, Context())
            expected = _answer(servicer.answer_reference, payload, Context(), None)
            assert answered == expected
            answers.append((answered, fast))
            tally["answers"] += 1
            tally["fast"] += fast
        (answered, _), (_, second_fast) = answers
        if isinstance(answered, bytes):  # the first was answered: a plan for this head
            assert second_fast

    check()
    assert tally["fast"] > 0  # the fast path did answer


def test_a_fast_answer_carries_the_predictions(tmp_path: Path) -> None:
    servicer = InferenceServicer(_source(tmp_path), Statistics())
    request = _request(2, "FP32", "", "9", True)
    x = np.array([[1, 2, 3], [4, 5, 6]], dtype="<f4")
    for scale in (1, 2):  # the second is answered from the plan
        response = pb.ModelInferResponse.FromString(
            servicer.ModelInfer(_payload(request, x * scale), Context())
        )
        y = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 2)
        np.testing.assert_array_equal(y, reference_predictions(x * scale))
        assert (response.id, response.model_version) == ("9", "1")
    assert len(servicer._plans) == 1


def test_a_plan_is_not_used_for_a_model_swapped_in(tmp_path: Path) -> None:
    source = _source(tmp_path)
    servicer = InferenceServicer(source, Statistics())
    request = _request(1, "FP32", "", "", False)
    x = np.array([[1, 2, 3]], dtype="<f4")
    servicer.ModelInfer(_payload(request, x), Context())
    weights, bias = CROP_WEIGHTS[:, :1] * 2, CROP_BIAS[:1]  # one target now, not two
    other = make_linear_onnx(tmp_path / "other.onnx", weights, bias, target_names=["apples"])
    source.snapshot = FixedModel(load_predictor(other), "crops").snapshot
    answer = servicer.ModelInfer(_payload(request, x), Context())
    response = pb.ModelInferResponse.FromString(answer)
    assert list(response.outputs[0].shape) == [1, 1]
    y = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(1, 1)
    np.testing.assert_array_equal(y, reference_predictions(x, weights, bias))


@pytest.mark.parametrize("entries", [0, 1, 2])
@given(raw=st.lists(st.binary(max_size=300), min_size=2, max_size=2), rows=st.integers(0, 200))
@settings(max_examples=50, deadline=None, derandomize=True, database=None)
def test_split_raw_finds_the_one_raw_input(entries: int, raw: list[bytes], rows: int) -> None:
    request = _request(rows, "FP32", "1", "x" * rows, True)
    request.raw_input_contents.extend(raw[:entries])
    payload = request.SerializeToString()
    split = split_raw(payload)
    if entries != 1:
        assert split is None
        return
    assert split is not None
    head, tail = split
    assert bytes(tail) == raw[0]
    assert pb.ModelInferRequest.FromString(head) == _request(rows, "FP32", "1", "x" * rows, True)


def test_split_raw_declines_a_request_it_cannot_read() -> None:
    payload = _payload(_request(1, "FP32", "", "", False), np.zeros(3, "<f4"))
    assert split_raw(payload[:-13]) is None  # cut inside the raw entry's length
    assert split_raw(payload + b"\x08\x01") is None  # a varint field after the raw input
    assert split_raw(b"\x0a\xff") is None  # a length cut short
    assert split_raw(b"\x3a" + b"\xff" * 12) is None  # a varint too long
    assert split_raw(b"\x82\x01\x00" + payload) is None  # field 16: a two-byte tag
    assert split_raw(payload + b"\x3a") is None  # one byte past the raw input


def test_bytes_that_are_no_request_are_invalid_argument(tmp_path: Path) -> None:
    servicer = InferenceServicer(_source(tmp_path), Statistics())
    code, _ = _answer(servicer.ModelInfer, b"\x0a\xff", Context())
    assert code is grpc.StatusCode.INVALID_ARGUMENT
