"""Open Inference Protocol (KServe V2) inference requests and responses, REST flavour.

Parses the JSON body of ``POST /v2/models/{name}/infer``, including the binary tensor
data extension (``Inference-Header-Content-Length``, ``binary_data_size``), into one
float32 ``[rows, features]`` array, and encodes predictions as JSON or binary outputs.
Everything a client can get wrong raises :class:`RequestError` with an HTTP status.
"""

from __future__ import annotations

import array
import threading
from typing import Any, NamedTuple

import numpy as np
import orjson

from pomona.runtime.errors import PomonaError

try:
    import simdjson
except ImportError:  # without it, every body is read with orjson
    simdjson = None  # type: ignore[assignment]

__all__ = [
    "BINARY_EXTENSION",
    "InferRequest",
    "RequestError",
    "encode_response",
    "parse_request",
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
_FLOAT32 = np.dtype(np.float32)
_FLOAT_KINDS = frozenset("fiu")
_INT_KINDS = frozenset("iu")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_PY_NUMBERS = frozenset({float, int})
_EMPTY = b""
_SMALL = 256  # flat JSON data up to this many values takes the quick path
# JSON-only bodies from this size are read with simdjson when it is installed: it puts the
# numbers of flat 'data' straight into an array, with no Python float per value. Below it
# (one to a few dozen rows) orjson is as quick.
_SIMDJSON_MIN = 4096
_USE_SIMDJSON = simdjson is not None
_SIMD_FLOATS = frozenset({"FP32", "FP64"})
_FLAT_BRACKETS = 16  # more '[' than a request with flat data holds: nested, left to orjson
_BOM = b"\xef\xbb\xbf"
# A parser keeps the buffers of the largest document it has read: reusing them saves the page
# faults of fresh ones on every request. Bodies over this size get a parser of their own, so
# that one huge request does not hold its buffers for good.
_REUSE_MAX = 1 << 20
_parsers = threading.local()  # a simdjson parser serves one thread at a time


class RequestError(PomonaError):
    """A request the server cannot answer as asked; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.http_status = status


class InferRequest(NamedTuple):
    """What one inference request asks for, ready for the model."""

    features: np.ndarray  # float32 [rows, features]
    id: str | None
    binary_output: bool  # whether the (single) output goes back as binary data


def _not_object(what: str) -> RequestError:
    return RequestError(f"{what} must be a JSON object")


def _not_bool(what: str, key: str) -> RequestError:
    return RequestError(f"{what} parameter {key!r} must be true or false")


def parse_request(
    body: bytes,
    header_length: int | None,
    *,
    input_name: str,
    output_name: str,
    n_features: int,
) -> InferRequest:
    """Turn an infer request body into an :class:`InferRequest`.

    ``header_length`` is the value of ``Inference-Header-Content-Length``: the JSON
    object's size when binary tensor data follows it, ``None`` for a JSON-only body.
    """
    if header_length is None:
        head: bytes | memoryview = body
        binary: bytes | memoryview = _EMPTY
    else:
        if header_length > len(body):
            raise RequestError(
                f"Inference-Header-Content-Length {header_length} exceeds the body size {len(body)}"
            )
        view = memoryview(body)
        head, binary = view[:header_length], view[header_length:]
    doc = None
    if _USE_SIMDJSON and header_length is None and len(body) >= _SIMDJSON_MIN:
        doc = _read_flat_numbers(body)
    if doc is None:
        try:
            doc = orjson.loads(head)
        except orjson.JSONDecodeError as err:
            raise RequestError(f"malformed JSON: {err}") from None
    if type(doc) is not dict:
        raise _not_object("the request")

    request_id = doc.get("id")
    if request_id is not None and type(request_id) is not str:
        raise RequestError("'id' must be a string")
    binary_output = False
    params = doc.get("parameters")
    if params is not None:
        if type(params) is not dict:
            raise _not_object("'parameters'")
        flag = params.get("binary_data_output")
        if flag is not None:
            if type(flag) is not bool:
                raise _not_bool("request", "binary_data_output")
            binary_output = flag

    inputs = doc.get("inputs")
    if type(inputs) is not list:
        raise RequestError("'inputs' must be a list of input tensors")
    features: np.ndarray | None = None
    offset = 0
    for index, tensor in enumerate(inputs):
        if type(tensor) is not dict:
            raise _not_object(f"inputs[{index}]")
        name = tensor.get("name")
        if name != input_name:
            if type(name) is not str:
                raise RequestError(f"inputs[{index}] needs a 'name' string")
            raise RequestError(
                f"unexpected input {name!r}; the model takes one input {input_name!r}"
            )
        if features is not None:
            raise RequestError(f"input {name!r} is given more than once")
        features, offset = _parse_tensor(tensor, binary, offset, name, n_features)
    if features is None:
        raise RequestError(f"missing input {input_name!r}")
    if offset != len(binary):
        raise RequestError(
            f"{len(binary) - offset} bytes of binary data after the JSON header "
            "belong to no input (check binary_data_size)"
        )

    outputs = doc.get("outputs")
    if outputs is not None:
        binary_output = _requested_outputs(outputs, output_name, binary_output)
    return InferRequest(features, request_id, binary_output)


def _read_flat_numbers(body: bytes) -> dict[str, Any] | None:
    """Read a JSON body with simdjson, each input's flat FP32/FP64 'data' as a float64 array.

    Returns the document as orjson would read it, except that such 'data' lists are numpy
    arrays. Returns ``None`` for anything else -- a document simdjson refuses, nested or
    non-numeric data, other datatypes, duplicate keys, escapes in strings, a byte order
    mark -- and the caller reads the body with orjson, whose answer or error stands. So both
    readers accept the same requests with the same values and refuse them with the same
    messages.
    """
    brackets = _count_brackets(body)
    if brackets > _FLAT_BRACKETS or b"\\" in body or body.startswith(_BOM):
        return None
    flats: list[tuple[dict[str, Any], np.ndarray]] = []
    doc: dict[str, Any] = {}
    try:
        root = _parser(len(body)).parse(body)
        if type(root) is not simdjson.Object:
            return None
        for key in root:
            if key in doc:
                return None  # orjson keeps the last of duplicate keys, simdjson the first
            value = root[key]
            if key == "inputs" and type(value) is simdjson.Array:
                inputs: list[Any] = []
                for item in value:
                    if type(item) is not simdjson.Object:
                        return None
                    tensor: dict[str, Any] = {}
                    for field in item:
                        if field in tensor:
                            return None
                        entry = item[field]
                        if field == "data" and type(entry) is simdjson.Array:
                            # Copied out of the parser's buffer; nested arrays flatten,
                            # anything but numbers raises TypeError.
                            flat = np.frombuffer(entry.as_buffer(of_type="d"), dtype=np.float64)
                            if len(flat) != len(entry):
                                return None  # nested
                            flats.append((tensor, flat))
                            tensor[field] = []
                        else:
                            tensor[field] = _plain(entry)
                    if "data" in tensor and tensor.get("datatype") not in _SIMD_FLOATS:
                        return None
                    inputs.append(tensor)
                doc[key] = inputs
            else:
                doc[key] = _plain(value)
    except (ValueError, TypeError, RuntimeError):  # orjson's reading says what is wrong
        # (RuntimeError also when proxies into the parser's last document were still alive)
        return None
    # A flat array has one '[': with no escapes, the body's brackets are those of the
    # document with each 'data' read as [] only when no 'data' array nests another.
    if brackets != orjson.dumps(doc).count(b"["):
        return None
    for tensor, flat in flats:
        tensor["data"] = flat
    return doc


def _count_brackets(body: bytes) -> int:
    """The number of '[' in ``body``, counting no further than one past ``_FLAT_BRACKETS``.

    ``bytes.find`` runs on memchr; ``bytes.count`` checks byte by byte, over ten times
    longer on a body of flat numbers.
    """
    count = 0
    at = body.find(b"[")
    while at >= 0 and count <= _FLAT_BRACKETS:
        count += 1
        at = body.find(b"[", at + 1)
    return count


def _parser(size: int) -> Any:
    if size > _REUSE_MAX:
        return simdjson.Parser()
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = simdjson.Parser()
    return parser


def _plain(value: Any) -> Any:
    """A simdjson value as Python objects, as orjson reads them."""
    if type(value) is simdjson.Object:
        return value.as_dict()
    if type(value) is simdjson.Array:
        return value.as_list()
    return value


def _requested_outputs(outputs: object, output_name: str, binary_output: bool) -> bool:
    """Check the ``outputs`` a request names; return whether the output goes back binary."""
    if type(outputs) is not list:
        raise RequestError("'outputs' must be a list of requested outputs")
    seen = False
    for index, wanted in enumerate(outputs):
        if type(wanted) is not dict:
            raise _not_object(f"outputs[{index}]")
        name = wanted.get("name")
        if name != output_name:
            raise RequestError(
                f"unknown output {name!r}; the model returns one output {output_name!r}"
            )
        if seen:
            raise RequestError(f"output {name!r} is requested more than once")
        seen = True
        params = wanted.get("parameters")
        if params is not None:
            if type(params) is not dict:
                raise _not_object(f"outputs[{index}].parameters")
            if params.get("classification") is not None:
                raise RequestError("the classification extension is not supported")
            flag = params.get("binary_data")
            if flag is not None:
                if type(flag) is not bool:
                    raise _not_bool(f"output {name!r}", "binary_data")
                binary_output = flag
    return binary_output


def _parse_tensor(
    tensor: dict[str, Any], binary: bytes | memoryview, offset: int, name: str, n_features: int
) -> tuple[np.ndarray, int]:
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
    if type(shape) is not list or len(shape) != 2 or shape[1] != n_features:
        raise _bad_shape(name, shape, n_features)
    rows = shape[0]
    if type(rows) is not int or rows < 0 or type(shape[1]) is not int:
        raise _bad_shape(name, shape, n_features)
    count = rows * n_features
    params = tensor.get("parameters")
    size = None
    if params is not None:
        if type(params) is not dict:
            raise _not_object(f"input {name!r} parameters")
        size = params.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise RequestError(f"input {name!r}: binary_data_size must be a non-negative integer")
        if "data" in tensor:
            raise RequestError(f"input {name!r} has both 'data' and binary_data_size")
        if size != count * wire.itemsize:
            raise RequestError(
                f"input {name!r}: binary_data_size {size} does not match shape {shape} of "
                f"{datatype} ({count * wire.itemsize} bytes)"
            )
        if offset + size > len(binary):
            raise RequestError(
                f"input {name!r}: binary_data_size {size} exceeds the "
                f"{len(binary) - offset} bytes of binary data left in the body"
            )
        arr = np.frombuffer(binary[offset : offset + size], dtype=wire)
        return _as_float32(arr).reshape(rows, n_features), offset + size

    data = tensor.get("data")
    if type(data) is np.ndarray:  # flat numbers, read by simdjson
        if data.size != count:
            raise _count_mismatch(name, data.size, shape, count)
        return _as_float32(data).reshape(rows, n_features), offset
    if type(data) is not list:
        raise RequestError(f"input {name!r} needs 'data' (a list) or binary_data_size")
    # A few flat numbers, as most requests carry: once they are known to be plain
    # numbers within float32's range, the cast needs no overflow guard.
    if (
        0 < len(data) <= _SMALL
        and len(data) == count
        and wire.kind == "f"
        and set(map(type, data)) <= _PY_NUMBERS
        and min(data) >= -_FLOAT32_MAX
        and max(data) <= _FLOAT32_MAX
    ):
        return np.array(data, dtype=_FLOAT32).reshape(rows, n_features), offset
    if len(data) == count > _SMALL and wire.kind == "f":
        # Many flat values: array.array refuses anything but numbers (and reads JSON
        # true/false as 1/0, refused below) and is quicker than numpy's type discovery.
        try:
            flat = np.frombuffer(array.array("d", data), dtype=np.float64)
        except (TypeError, OverflowError):
            pass  # nested lists or non-numbers: the general path says what is wrong
        else:
            if _holds_bool(data, flat):
                raise _not_numbers(name, datatype, "numbers")
            return _as_float32(flat).reshape(rows, n_features), offset
    try:
        arr = np.asarray(data)
    except ValueError:
        raise RequestError(f"input {name!r}: 'data' is ragged; expected {shape}") from None
    kinds = _INT_KINDS if wire.kind in _INT_KINDS else _FLOAT_KINDS
    what = "integers" if kinds is _INT_KINDS else "numbers"
    if arr.dtype.kind not in kinds:
        if arr.size == 0:
            arr = arr.astype(_FLOAT32)
        else:
            raise _not_numbers(name, datatype, what)
    if arr.size != count:
        raise _count_mismatch(name, arr.size, shape, count)
    if arr.ndim != 1 and arr.shape != (rows, n_features):
        raise RequestError(
            f"input {name!r}: nested 'data' has shape {list(arr.shape)}, not {shape}"
        )
    if _holds_bool(data, arr):  # numpy reads true/false among numbers as 1/0
        raise _not_numbers(name, datatype, what)
    return _as_float32(arr).reshape(rows, n_features), offset


def _count_mismatch(name: str, size: int, shape: object, count: int) -> RequestError:
    return RequestError(
        f"input {name!r}: 'data' holds {size} values but shape {shape} needs {count}"
    )


def _not_numbers(name: str, datatype: object, what: str) -> RequestError:
    return RequestError(f"input {name!r}: 'data' must hold only {what} for {datatype}")


def _holds_bool(data: list[Any], values: np.ndarray) -> bool:
    """Whether JSON ``data`` (flat, or nested as ``values``' rows) holds true or false.

    Converted, a boolean is 0 or 1, so only the cells with those values are looked up.
    """
    if values.size == 0:
        return False
    zero_or_one = values == 0
    zero_or_one |= values == 1
    if not zero_or_one.any():
        return False
    candidates = np.flatnonzero(zero_or_one).tolist()
    if values.ndim == 1:
        return any(type(data[i]) is bool for i in candidates)
    width = values.shape[1]
    return any(type(data[i // width][i % width]) is bool for i in candidates)


def _bad_shape(name: str, shape: object, n_features: int) -> RequestError:
    return RequestError(
        f"input {name!r}: 'shape' must be [rows, {n_features}] ({n_features} features per row), "
        f"got {shape!r}"
    )


def _as_float32(arr: np.ndarray) -> np.ndarray:
    if arr.dtype is _FLOAT32:
        if not arr.flags.aligned:
            return arr.copy()
        return arr
    with np.errstate(over="ignore"):  # too large for float32: inf, refused as non-finite
        return arr.astype(_FLOAT32)


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
