"""Open Inference Protocol (KServe V2 REST) infer requests and responses.

:func:`decode_request` is the one entry point: it turns the body of ``POST
/v2/models/{name}/infer`` (JSON, or a JSON header followed by binary tensor data as
``Inference-Header-Content-Length`` and ``binary_data_size`` say) into one float32
``[rows, features]`` array. It first tries the fast readers of :mod:`.codec_fast`
(orjson, simdjson, flat-array tricks); each of them either gives exactly what the
reference reader gives, or declines, and then :func:`decode_reference` answers. The
reference reader is plain on purpose: the standard library's ``json`` and one walk over
the data. Every error a client can cause is a :class:`RequestError` with an HTTP status.

What the reference reads: UTF-8 JSON (no byte order mark, NaN, Infinity or lone
surrogates); an integer within 64 bits as an integer, any other number as the nearest
float64 (too large for float64: refused); ``data`` as a flat list of ``rows * features``
numbers or as ``rows`` lists of ``features`` numbers; booleans are not numbers; values are
rounded to float32 (beyond its range: infinite, refused by the predictor).
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

import numpy as np
import orjson

from pomona.runtime.errors import PomonaError
from pomona.runtime.serve import codec_fast
from pomona.runtime.serve.codec_fast import Declined, as_float32

__all__ = [
    "BINARY_EXTENSION",
    "InferRequest",
    "ModelIO",
    "RequestError",
    "decode_reference",
    "decode_request",
    "encode_response",
]

#: Name under which servers announce the binary tensor data extension in ``GET /v2``.
BINARY_EXTENSION = "binary_tensor_data"

# Datatypes a client may send; each is cast to float32 before it reaches the model.
_WIRE_DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
}
# Datatypes the protocol defines but a regression model on numbers cannot take.
_OTHER_DTYPES = frozenset({"BOOL", "FP16", "BF16", "BYTES"})
_INT_RANGE = range(-(2**63), 2**64)  # integers JSON readers keep as integers
_INT_DIGITS = len(str(-(2**63)))  # the most characters a 64-bit JSON integer has
_NO_BINARY = memoryview(b"")


class RequestError(PomonaError):
    """A request the server cannot answer as asked; ``http_status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.http_status = status


class ModelIO(NamedTuple):
    """What the codec needs to know of the model: its tensor names and width."""

    input_name: str
    output_name: str
    n_features: int


class InferRequest(NamedTuple):
    """What one inference request asks for, ready for the model."""

    features: np.ndarray  # float32 [rows, features]
    id: str | None
    binary_output: bool  # whether the (single) output goes back as binary data


# -- the entry point -------------------------------------------------------------------------


def decode_request(body: bytes, header_length: int | None, model: ModelIO) -> InferRequest:
    """Turn an infer request body into an :class:`InferRequest`, by the quickest reader.

    ``header_length`` is the value of ``Inference-Header-Content-Length``: the JSON
    object's size when binary tensor data follows it, ``None`` for a JSON-only body.
    """
    head, binary = _split(body, header_length)
    try:
        doc = codec_fast.read_json(head, json_only=header_length is None)
        return _read_document(doc, binary, model, fast=True)
    except Declined:
        return decode_reference(body, header_length, model)


def decode_reference(body: bytes, header_length: int | None, model: ModelIO) -> InferRequest:
    """The reference reader: what :func:`decode_request` answers, read the plain way."""
    head, binary = _split(body, header_length)
    return _read_document(_reference_json(head), binary, model, fast=False)


def _split(body: bytes, header_length: int | None) -> tuple[bytes | memoryview, memoryview]:
    if header_length is None:
        return body, _NO_BINARY
    if header_length > len(body):
        raise RequestError(
            f"Inference-Header-Content-Length {header_length} exceeds the body size {len(body)}"
        )
    view = memoryview(body)
    return view[:header_length], view[header_length:]


def _reference_json(head: bytes | memoryview) -> Any:
    try:
        doc = json.loads(
            bytes(head).decode("utf-8"),
            parse_int=_json_int,
            parse_float=_json_float,
            parse_constant=_json_constant,
        )
        json.dumps(doc, ensure_ascii=False).encode("utf-8")  # lone surrogates are not text
    except (ValueError, RecursionError) as err:  # UnicodeError, JSONDecodeError among them
        raise RequestError(f"malformed JSON: {err}") from None
    return doc


def _json_int(text: str) -> int | float:
    if len(text) > _INT_DIGITS:  # past any 64-bit integer: a float (int() would refuse 4300+)
        return _json_float(text)
    value = int(text)
    return value if value in _INT_RANGE else _json_float(text)


def _json_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is beyond the range of float64")
    return value


def _json_constant(text: str) -> float:
    raise ValueError(f"{text} is not a JSON number")


# -- the document ----------------------------------------------------------------------------


def _not_object(what: str) -> RequestError:
    return RequestError(f"{what} must be a JSON object")


def _flag(params: object, key: str, what: str, default: bool) -> bool:
    """The boolean ``key`` of a ``parameters`` object, or ``default`` when it is absent."""
    if params is None:
        return default
    if type(params) is not dict:
        raise _not_object(f"{what} parameters")
    flag = params.get(key)
    if flag is None:
        return default
    if type(flag) is not bool:
        raise RequestError(f"{what} parameter {key!r} must be true or false")
    return flag


def _read_document(doc: object, binary: memoryview, model: ModelIO, fast: bool) -> InferRequest:
    if type(doc) is not dict:
        raise _not_object("the request")
    request_id = doc.get("id")
    if request_id is not None and type(request_id) is not str:
        raise RequestError("'id' must be a string")
    params = doc.get("parameters")
    if params is not None and type(params) is not dict:
        raise _not_object("'parameters'")
    binary_output = (
        False if params is None else _flag(params, "binary_data_output", "request", False)
    )
    features = _read_inputs(doc.get("inputs"), binary, model, fast)
    outputs = doc.get("outputs")
    if outputs is not None:
        binary_output = _requested_outputs(outputs, model.output_name, binary_output)
    return InferRequest(features, request_id, binary_output)


def _read_inputs(inputs: object, binary: memoryview, model: ModelIO, fast: bool) -> np.ndarray:
    if type(inputs) is not list:
        raise RequestError("'inputs' must be a list of input tensors")
    features: np.ndarray | None = None
    offset = 0
    for index, tensor in enumerate(inputs):
        if type(tensor) is not dict:
            raise _not_object(f"inputs[{index}]")
        name = tensor.get("name")
        if name != model.input_name:
            if type(name) is not str:
                raise RequestError(f"inputs[{index}] needs a 'name' string")
            raise RequestError(
                f"unexpected input {name!r}; the model takes one input {model.input_name!r}"
            )
        if features is not None:
            raise RequestError(f"input {name!r} is given more than once")
        features, offset = _read_tensor(tensor, binary, offset, model.n_features, fast)
    if features is None:
        raise RequestError(f"missing input {model.input_name!r}")
    if offset != len(binary):
        raise RequestError(
            f"{len(binary) - offset} bytes of binary data after the JSON header "
            "belong to no input (check binary_data_size)"
        )
    return features


def _requested_outputs(outputs: object, output_name: str, binary_output: bool) -> bool:
    """Check the ``outputs`` a request names; return whether the output goes back binary."""
    if type(outputs) is not list:
        raise RequestError("'outputs' must be a list of requested outputs")
    for index, wanted in enumerate(outputs):
        if type(wanted) is not dict:
            raise _not_object(f"outputs[{index}]")
        name = wanted.get("name")
        if name != output_name:
            raise RequestError(
                f"unknown output {name!r}; the model returns one output {output_name!r}"
            )
        if index > 0:
            raise RequestError(f"output {name!r} is requested more than once")
        params = wanted.get("parameters")
        if params is not None and type(params) is not dict:
            raise _not_object(f"outputs[{index}].parameters")
        if params is not None and params.get("classification") is not None:
            raise RequestError("the classification extension is not supported")
        binary_output = _flag(params, "binary_data", f"output {name!r}", binary_output)
    return binary_output


# -- one tensor ------------------------------------------------------------------------------


class _Tensor(NamedTuple):
    name: str
    datatype: str
    wire: np.dtype[Any]
    shape: list[int]
    rows: int
    n_features: int


def _checked(tensor: dict[str, Any], n_features: int) -> tuple[np.dtype[Any], int]:
    """The wire dtype and row count of an input tensor, once its datatype and shape pass."""
    name = tensor["name"]
    datatype = tensor.get("datatype")
    wire = _WIRE_DTYPES.get(datatype) if type(datatype) is str else None
    if wire is None:
        if type(datatype) is str and datatype in _OTHER_DTYPES:
            raise RequestError(
                f"input {name!r}: datatype {datatype} is not supported; "
                "send FP32 (or FP64 or an integer type)"
            )
        raise RequestError(f"input {name!r}: unknown datatype {datatype!r}")
    shape = tensor.get("shape")
    if (
        type(shape) is not list
        or len(shape) != 2
        or type(shape[0]) is not int
        or type(shape[1]) is not int
        or shape[0] < 0
        or shape[1] != n_features
    ):
        raise RequestError(
            f"input {name!r}: 'shape' must be [rows, {n_features}] ({n_features} features "
            f"per row), got {shape!r}"
        )
    return wire, shape[0]


def _read_tensor(
    tensor: dict[str, Any], binary: memoryview, offset: int, n_features: int, fast: bool
) -> tuple[np.ndarray, int]:
    wire, rows = _checked(tensor, n_features)
    params = tensor.get("parameters")
    if params is not None and type(params) is not dict:
        raise _not_object(f"input {tensor['name']!r} parameters")
    size = None if params is None else params.get("binary_data_size")
    if size is not None:
        values = _binary_values(tensor, wire, size, binary, offset)
        return values.reshape(rows, n_features), offset + size
    if fast:
        return codec_fast.tensor_values(tensor.get("data"), wire, rows, n_features), offset
    spec = _Tensor(tensor["name"], tensor["datatype"], wire, tensor["shape"], rows, n_features)
    return _reference_values(tensor.get("data"), spec), offset


def _binary_values(
    tensor: dict[str, Any], wire: np.dtype[Any], size: Any, binary: memoryview, offset: int
) -> np.ndarray:
    """The flat values of a tensor sent as ``size`` bytes at ``offset`` in ``binary``."""
    name, shape = tensor["name"], tensor["shape"]
    if type(size) is not int or size < 0:
        raise RequestError(f"input {name!r}: binary_data_size must be a non-negative integer")
    if "data" in tensor:
        raise RequestError(f"input {name!r} has both 'data' and binary_data_size")
    expected = shape[0] * shape[1] * wire.itemsize
    if size != expected:
        raise RequestError(
            f"input {name!r}: binary_data_size {size} does not match shape {shape} of "
            f"{tensor['datatype']} ({expected} bytes)"
        )
    if offset + size > len(binary):
        raise RequestError(
            f"input {name!r}: binary_data_size {size} exceeds the "
            f"{len(binary) - offset} bytes of binary data left in the body"
        )
    return as_float32(np.frombuffer(binary[offset : offset + size], dtype=wire))


def _reference_values(data: object, spec: _Tensor) -> np.ndarray:
    """JSON ``data`` as float32 ``[rows, features]``, checked step by step."""
    name, rows, width = spec.name, spec.rows, spec.n_features
    if type(data) is not list:
        raise RequestError(f"input {name!r} needs 'data' (a list) or binary_data_size")
    found = _dims_and_leaves(data)
    if found is None:
        raise RequestError(f"input {name!r}: 'data' is ragged; expected {spec.shape}")
    dims, leaves = found
    integers = spec.wire.kind in "iu"
    numbers = (int,) if integers else (int, float)
    if any(type(value) not in numbers for value in leaves):  # bool is not int here
        what = "integers" if integers else "numbers"
        raise RequestError(f"input {name!r}: 'data' must hold only {what} for {spec.datatype}")
    if len(leaves) != rows * width:
        raise RequestError(
            f"input {name!r}: 'data' holds {len(leaves)} values but shape {spec.shape} "
            f"needs {rows * width}"
        )
    if len(dims) != 1 and dims != (rows, width):
        raise RequestError(
            f"input {name!r}: nested 'data' has shape {list(dims)}, not {spec.shape}"
        )
    values = np.array([float(value) for value in leaves], dtype=np.float64)
    with np.errstate(over="ignore"):  # too large for float32: inf, refused by the predictor
        return values.astype(np.float32).reshape(rows, width)


def _dims_and_leaves(data: list[Any]) -> tuple[tuple[int, ...], list[Any]] | None:
    """The shape of nested lists and their values in order; ``None`` when ragged."""
    dims: list[int] = []
    level = [data]
    while True:
        lengths = {len(items) for items in level}
        if len(lengths) > 1:
            return None
        dims.append(lengths.pop())
        children = [value for items in level for value in items]
        nested = [type(value) is list for value in children]
        if not any(nested):
            return tuple(dims), children
        if not all(nested):
            return None
        level = children


# -- responses -------------------------------------------------------------------------------


def encode_response(
    predictions: np.ndarray,
    *,
    model_name: str,
    model_version: str,
    output_name: str,
    request_id: str | None,
    binary_output: bool,
) -> tuple[bytes, int | None]:
    """Encode a response body; also return the JSON header length when binary data follows."""
    output: dict[str, Any] = {
        "name": output_name,
        "datatype": "FP32",
        "shape": list(predictions.shape),
    }
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = [output]
    if binary_output:
        raw = np.ascontiguousarray(predictions, dtype="<f4").tobytes()
        output["parameters"] = {"binary_data_size": len(raw)}
        head = orjson.dumps(doc)
        return head + raw, len(head)
    output["data"] = predictions.ravel()
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), None
