"""The infer request codec: every fast path gives what the plain reference reader gives.

``decode_request`` reads JSON with orjson (large JSON-only bodies with simdjson when it is
installed) and converts ``data`` by the quickest route; whatever a fast path does not take
goes to ``decode_reference`` (the standard library's ``json``, one walk over the data).
These tests run each body through the reference and through the fast readers (with and
without simdjson) and compare what comes out; the property tests count how many generated
requests each fast path actually took.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pomona.runtime.serve import codec_fast
from pomona.runtime.serve.codec import (
    InferRequest,
    ModelIO,
    RequestError,
    decode_reference,
    decode_request,
    encode_response,
)
from tests.conftest import needs
from tests.runtime.serve.cases import BAD_REQUESTS, INFER

N_FEATURES = 3
MODEL = ModelIO("features", "predictions", N_FEATURES)
READERS = ["orjson", "simdjson"]
# Without simdjson these tests skip, except where every extra is meant to be installed
# (POMONA_ALL_EXTRAS=1, as `make test` sets): there test_simdjson_is_installed fails.
needs_simdjson = pytest.mark.skipif(codec_fast.simdjson is None, reason="simdjson is not installed")


def test_simdjson_is_installed() -> None:
    needs("simdjson")


Decoder = Callable[[bytes, "int | None", ModelIO], InferRequest]


@pytest.fixture(params=READERS)
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Read every body with one reader; simdjson takes bodies of any size."""
    if request.param == "simdjson" and codec_fast.simdjson is None:
        pytest.skip("simdjson is not installed")
    monkeypatch.setattr(codec_fast, "USE_SIMDJSON", request.param == "simdjson")
    monkeypatch.setattr(codec_fast, "SIMDJSON_MIN", 0)
    yield request.param


def parse(body: bytes, header_length: int | None = None) -> InferRequest:
    return decode_request(body, header_length, MODEL)


def outcome(
    body: bytes, header_length: int | None = None, decode: Decoder = decode_request
) -> tuple[object, ...]:
    """What a reader makes of a body: the request it yields, or the error it raises."""
    try:
        request = decode(body, header_length, MODEL)
    except RequestError as err:
        return ("error", err.http_status, str(err))
    features = request.features
    assert features.dtype == np.float32 and features.shape[1:] == (N_FEATURES,)
    return ("ok", features.shape, features.tobytes(), request.id, request.binary_output)


def both(body: bytes, header_length: int | None = None) -> tuple[object, ...]:
    """The reference's outcome, after checking that every fast reader's is the same."""
    expected = outcome(body, header_length, decode_reference)
    for use in (False, True) if codec_fast.simdjson is not None else (False,):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(codec_fast, "USE_SIMDJSON", use)
            patch.setattr(codec_fast, "SIMDJSON_MIN", 0)
            assert outcome(body, header_length) == expected, body[:300]
    return expected


def request_body(data: object, shape: object = None, **fields: object) -> bytes:
    tensor = {"name": "features", "shape": shape, "datatype": "FP32", "data": data, **fields}
    if shape is None:
        tensor["shape"] = [len(data) // N_FEATURES, N_FEATURES]  # type: ignore[arg-type]
    return json.dumps({"inputs": [tensor]}).encode()


_VALUES = np.round(np.random.default_rng(0).uniform(0, 100, size=(400, 3)), 2)
LARGE = request_body(_VALUES.ravel().tolist())


# -- the parse-level cases of the server's malformed-request battery -------------------------


def _parse_level(case: tuple) -> bool:
    _, method, path, _body, headers, status, _ = case
    if method != "POST" or path != INFER or status != 400 or "Content-Encoding" in headers:
        return False
    return headers.get("Inference-Header-Content-Length", "0").isdigit()


PARSE_CASES = [case for case in BAD_REQUESTS if _parse_level(case)]


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [(case[3], case[4], case[6]) for case in PARSE_CASES],
    ids=[case[0] for case in PARSE_CASES],
)
def test_battery_reads_the_same_with_every_reader(
    body: bytes, headers: dict[str, str], message: str
) -> None:
    length = headers.get("Inference-Header-Content-Length")
    result = both(body, None if length is None else int(length))
    if result[0] == "error":  # the rest (non-finite values, no rows) the server refuses
        assert result[1] == 400 and re.search(message, str(result[2])), result


# -- large bodies, which simdjson reads in the server ----------------------------------------

_FLAT = _VALUES.ravel().tolist()
_BIG_INT = 18446744073709551616  # beyond 64 bits: orjson reads it as a float


def _with(index: int, value: object) -> list[object]:
    data: list[object] = list(_FLAT)
    data[index] = value
    return data


LARGE_BAD: list[tuple[str, bytes, str]] = [
    ("string", request_body(_with(7, "7")), "only numbers"),
    ("null", request_body(_with(7, None)), "only numbers"),
    ("true", request_body(_with(7, True)), "only numbers"),
    ("false", request_body(_with(1199, False)), "only numbers"),
    ("object", request_body(_with(0, {"a": 1})), "only numbers"),
    ("beyond-float64", LARGE.replace(b"]}]}", b", 1e400]}]}"), "malformed JSON"),
    ("nan", LARGE.replace(b"]}]}", b", NaN]}]}"), "malformed JSON"),
    ("too-few", request_body(_FLAT[:-1], shape=[400, 3]), "holds 1199 values"),
    ("too-many", request_body([*_FLAT, 1.0], shape=[400, 3]), "holds 1201 values"),
    ("shape-mismatch", request_body(_FLAT, shape=[401, 3]), "holds 1200 values"),
    (
        "ragged",
        request_body([[1, 2, 3, 4], [5, 6]] * 200, shape=[400, 3]),
        "ragged",
    ),
    ("nested-wrong-shape", request_body(_VALUES.reshape(600, 2).tolist(), [400, 3]), "nested"),
    ("nested-in-a-row", request_body([[[1, 2, 3], 4, 5], 6] * 200, shape=[400, 3]), "ragged"),
    ("flat-looking", request_body([[1.0]] * 1200, shape=[400, 3]), "nested"),
    ("mixed-depth", request_body([*_FLAT[:1198], [1.0], []], shape=[400, 3]), "ragged"),
    ("deep", request_body([[[_FLAT[:3]]]] * 400, shape=[400, 3]), "nested"),
    ("int-datatype-float", request_body(_FLAT, datatype="INT32"), "only integers"),
    ("trailing-garbage", LARGE + b"x", "malformed JSON"),
    ("two-documents", LARGE + LARGE, "malformed JSON"),
    ("trailing-nul", LARGE + b"\x00", "malformed JSON"),
    ("invalid-utf8", LARGE.replace(b'"features"', b'"feat\xffures"'), "malformed JSON"),
    ("byte-order-mark", b"\xef\xbb\xbf" + LARGE, "malformed JSON"),
    ("truncated", LARGE[:-3], "malformed JSON"),
    ("not-an-object", json.dumps(_FLAT).encode(), "JSON object"),
    ("control-character", LARGE.replace(b'"features"', b'"feat\x01ures"'), "malformed JSON"),
    ("deep-arrays", b"[" * 5000 + b"]" * 5000, "malformed JSON"),
    ("deep-objects", b'{"a":' * 5000 + b"1" + b"}" * 5000, "malformed JSON"),
    ("id-not-string", LARGE.replace(b'{"inputs"', b'{"id": 5, "inputs"'), "'id'"),
]


@pytest.mark.parametrize(
    ("body", "message"), [case[1:] for case in LARGE_BAD], ids=[case[0] for case in LARGE_BAD]
)
def test_large_malformed_body_gets_the_same_error_from_either_reader(
    body: bytes, message: str
) -> None:
    assert len(body) >= codec_fast.SIMDJSON_MIN or body.startswith(b"[[")
    result = both(body)
    assert result[0] == "error" and result[1] == 400, result
    assert re.search(message, str(result[2])), result


LARGE_GOOD: list[tuple[str, bytes]] = [
    ("flat", LARGE),
    ("nested", request_body(_VALUES.tolist(), shape=[400, 3])),
    ("ints-and-floats", request_body([0, 1, 2.5, -0.0, 1e-400, 1e38] * 200)),
    ("beyond-float32", request_body(_with(5, 1e300))),  # inf, refused by the server
    ("beyond-int64", request_body(_with(5, 9223372036854775808))),
    ("beyond-64-bits", request_body(_with(5, _BIG_INT))),
    ("fp64", request_body(_FLAT, datatype="FP64")),
    ("int64", request_body(_VALUES.astype(int).ravel().tolist(), datatype="INT64")),
    ("duplicate-data", LARGE.replace(b'"data": [', b'"data": [1, 2, 3], "data": [', 1)),
    ("duplicate-inputs", b'{"inputs": [], ' + LARGE[1:]),
    ("escapes", LARGE.replace(b'{"inputs"', b'{"id": "a\\"b\\u005b", "inputs"')),
    ("brackets-in-strings", LARGE.replace(b'{"inputs"', b'{"id": "[[[", "inputs"')),
    ("unicode", LARGE.replace(b'{"inputs"', '{"id": "é\U0001f600", "inputs"'.encode())),
    (
        "id-outputs-parameters",
        LARGE.replace(
            b'{"inputs"',
            b'{"id": "r1", "parameters": {"binary_data_output": true, "x": [[1]]}, '
            b'"outputs": [{"name": "predictions", "parameters": {"binary_data": false}}], '
            b'"inputs"',
        ),
    ),
    ("whitespace", LARGE.replace(b", ", b" ,\n\t ").replace(b"{", b" { ")),
]


@pytest.mark.parametrize("body", [case[1] for case in LARGE_GOOD], ids=[c[0] for c in LARGE_GOOD])
def test_large_valid_body_reads_the_same_with_either_reader(body: bytes) -> None:
    result = both(body)
    assert result[0] == "ok", result


@needs_simdjson
def test_flat_data_takes_the_simdjson_path_and_the_rest_does_not() -> None:
    doc = codec_fast.read_flat_numbers(LARGE)
    assert doc is not None
    data = doc["inputs"][0]["data"]
    assert type(data) is np.ndarray and data.dtype == np.float64
    np.testing.assert_array_equal(data, np.array(_FLAT))
    for name in ("nested", "duplicate-data", "duplicate-inputs", "escapes", "int64"):
        assert codec_fast.read_flat_numbers(dict(LARGE_GOOD)[name]) is None, name


def test_without_simdjson_large_bodies_are_read_by_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec_fast, "USE_SIMDJSON", False)

    def refuse(body: bytes) -> None:
        raise AssertionError("simdjson is off")

    monkeypatch.setattr(codec_fast, "read_flat_numbers", refuse)
    request = parse(LARGE)
    np.testing.assert_array_equal(request.features, _VALUES.astype(np.float32))


def test_binary_requests_are_not_read_by_simdjson(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec_fast, "SIMDJSON_MIN", 0)

    def refuse(body: bytes) -> None:
        raise AssertionError("a binary request's header went to simdjson")

    monkeypatch.setattr(codec_fast, "read_flat_numbers", refuse)
    raw = _VALUES.astype("<f4").tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [400, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    request = parse(head + raw, len(head))
    np.testing.assert_array_equal(request.features, _VALUES.astype(np.float32))


def test_reader_fixture_parses_large_flat(reader: str) -> None:
    request = parse(LARGE)
    np.testing.assert_array_equal(request.features, _VALUES.astype(np.float32))


# -- arbitrary bodies: both readers agree ----------------------------------------------------

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)
_numbers = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, 0.0, 1.0, -0.0, 3.4e38, 3.5e38, 5e-324]),
)


@st.composite
def _documents(draw: st.DrawFn) -> bytes:
    rows = draw(st.integers(0, 6))
    values = draw(st.lists(_numbers, min_size=rows * 3, max_size=rows * 3))
    data: object = values
    if draw(st.booleans()) and rows:
        data = [values[i : i + 3] for i in range(0, len(values), 3)]
    if draw(st.integers(0, 3)) == 0:
        data = draw(_json_values)
    tensor: dict[str, object] = {
        "name": draw(st.sampled_from(["features", "features", "other"])),
        "shape": draw(st.sampled_from([[rows, 3], [rows, 3], [rows + 1, 3], [rows], None])),
        "datatype": draw(st.sampled_from(["FP32", "FP32", "FP64", "INT64", "BOOL"])),
        "data": data,
    }
    doc: dict[str, object] = {"inputs": [tensor]}
    for key in draw(st.lists(st.sampled_from(["id", "parameters", "outputs", "extra"]))):
        doc[key] = draw(_json_values)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()
    cut = draw(st.integers(0, 3))
    if cut == 0 and text:  # one byte changed: anything from valid to garbage
        where = draw(st.integers(0, len(text) - 1))
        byte = draw(st.binary(min_size=1, max_size=1))
        text = text[:where] + byte + text[where + 1 :]
    return text


@given(body=_documents())
@settings(max_examples=400, deadline=None, derandomize=True, database=None)
def test_arbitrary_bodies_read_the_same_with_every_reader(body: bytes) -> None:
    both(body)


@needs_simdjson
def test_bodies_over_the_reuse_limit_get_a_parser_of_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(codec_fast, "REUSE_MAX", 0)
    assert codec_fast._parser(1) is not codec_fast._parser(1)
    doc = codec_fast.read_flat_numbers(LARGE)
    assert doc is not None
    np.testing.assert_array_equal(doc["inputs"][0]["data"], np.array(_FLAT))


def test_reference_reads_json_strictly() -> None:
    for body, message in (
        (b'{"inputs": [], "x": NaN}', "not a JSON number"),
        (b'{"inputs": [], "x": 1e400}', "beyond the range of float64"),
        (b'{"inputs": [], "id": "\\ud800"}', "malformed JSON"),
        (b"\xef\xbb\xbf{}", "malformed JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed JSON"),
    ):
        with pytest.raises(RequestError, match=message):
            decode_reference(body, None, MODEL)
    request = decode_reference(request_body([2**64, 2**63, -(2**63) - 1]), None, MODEL)
    np.testing.assert_array_equal(
        request.features, np.array([[2.0**64, 2.0**63, -(2.0**63)]], dtype=np.float32)
    )


@pytest.mark.parametrize("binary_output", [False, True])
def test_encoded_response_reads_back(binary_output: bool) -> None:
    y = np.array([[1.5, -2.0], [3.25, 0.0]], dtype=np.float32)
    body, json_length = encode_response(
        y,
        model_name="m",
        model_version="1",
        output_name="predictions",
        request_id="r",
        binary_output=binary_output,
    )
    head = json.loads(body if json_length is None else body[:json_length])
    assert head["model_name"] == "m" and head["id"] == "r"
    (output,) = head["outputs"]
    assert output["shape"] == [2, 2] and output["datatype"] == "FP32"
    if binary_output:
        assert json_length is not None
        assert output["parameters"]["binary_data_size"] == len(body) - json_length == 16
        np.testing.assert_array_equal(np.frombuffer(body[json_length:], "<f4").reshape(2, 2), y)
    else:
        assert json_length is None
        np.testing.assert_array_equal(np.array(output["data"], "<f4").reshape(2, 2), y)
