"""The quick ways through an infer request, each giving what the reference reader gives.

:func:`pomona.runtime.serve.codec.decode_request` tries these before the reference
reader of :mod:`.codec`: JSON is read with orjson, or, for a large JSON-only body,
with simdjson, which puts the numbers of flat FP32/FP64 ``data`` straight into an array
(no Python float per value); ``data`` of a float datatype becomes float32 by the
quickest route its shape allows. Anything unusual -- a body these readers refuse,
integer datatypes, booleans, nesting other than rows, values beyond float32 -- raises
:class:`Declined`, and the reference reader answers, errors included. So a fast path
never decides what is wrong with a request, and the tests hold each one to the
reference on generated requests.
"""

from __future__ import annotations

import array
import threading
from typing import Any

import numpy as np
import orjson

try:
    import simdjson
except ImportError:  # without it, every body is read with orjson
    simdjson = None  # type: ignore[assignment]

__all__ = ["Declined", "as_float32", "read_json", "tensor_values"]

_FLOAT32 = np.dtype(np.float32)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_PY_NUMBERS = frozenset({float, int})
#: Flat JSON data up to this many values is converted by numpy straight from the list.
SMALL = 256
#: JSON-only bodies from this size are read with simdjson when it is installed. Below it
#: (one to a few dozen rows) orjson is as quick.
SIMDJSON_MIN = 4096
USE_SIMDJSON = simdjson is not None
_SIMD_FLOATS = frozenset({"FP32", "FP64"})
_FLAT_BRACKETS = 16  # more '[' than a request with flat data holds: nested, left to orjson
_BOM = b"\xef\xbb\xbf"
# A parser keeps the buffers of the largest document it has read: reusing them saves the page
# faults of fresh ones on every request. Bodies over this size get a parser of their own, so
# that one huge request does not hold its buffers for good.
REUSE_MAX = 1 << 20
_parsers = threading.local()  # a simdjson parser serves one thread at a time


class Declined(Exception):
    """This fast path does not take the request; the reference reader answers it."""


def as_float32(arr: np.ndarray) -> np.ndarray:
    """``arr`` as float32, without a copy when it already is one (and aligned)."""
    if arr.dtype is _FLOAT32:
        return arr.copy() if not arr.flags.aligned else arr
    with np.errstate(over="ignore"):  # too large for float32: inf, refused as non-finite
        return arr.astype(_FLOAT32)


# -- reading JSON ----------------------------------------------------------------------------


def read_json(head: bytes | memoryview, *, json_only: bool) -> Any:
    """The JSON document, read by simdjson (large JSON-only bodies) or orjson."""
    if json_only and USE_SIMDJSON and len(head) >= SIMDJSON_MIN:
        doc = read_flat_numbers(bytes(head))
        if doc is not None:
            return doc
    try:
        return orjson.loads(head)
    except orjson.JSONDecodeError:
        raise Declined from None


def read_flat_numbers(body: bytes) -> dict[str, Any] | None:
    """Read a JSON body with simdjson, each input's flat FP32/FP64 'data' as a float64 array.

    Returns the document as orjson reads it, except that such 'data' lists are numpy
    arrays. Returns ``None`` for anything else -- a document simdjson refuses, nested or
    non-numeric data, other datatypes, duplicate keys, escapes in strings, a byte order
    mark -- and the body is read with orjson instead.
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
                inputs = [_simd_tensor(item, flats) for item in value]
                if None in inputs:
                    return None
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


def _simd_tensor(item: Any, flats: list[tuple[dict[str, Any], np.ndarray]]) -> Any:
    """One input tensor with flat float 'data' set aside in ``flats``; ``None`` otherwise."""
    if type(item) is not simdjson.Object:
        return None
    tensor: dict[str, Any] = {}
    for field in item:
        if field in tensor:
            return None
        entry = item[field]
        if field == "data" and type(entry) is simdjson.Array:
            # Copied out of the parser's buffer; nested arrays flatten, anything but
            # numbers raises TypeError.
            flat = np.frombuffer(entry.as_buffer(of_type="d"), dtype=np.float64)
            if len(flat) != len(entry):
                return None  # nested
            flats.append((tensor, flat))
            tensor[field] = []
        else:
            tensor[field] = _plain(entry)
    if "data" in tensor and tensor.get("datatype") not in _SIMD_FLOATS:
        return None
    return tensor


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
    if size > REUSE_MAX:
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


# -- tensor data -----------------------------------------------------------------------------


def tensor_values(data: object, wire: np.dtype[Any], rows: int, n_features: int) -> np.ndarray:
    """JSON ``data`` of a float datatype as float32 ``[rows, features]``, or :class:`Declined`.

    Takes flat numbers (a list, or an array from :func:`read_flat_numbers`) and ``rows``
    lists of ``n_features`` numbers.
    """
    count = rows * n_features
    if wire.kind != "f" or count == 0:
        raise Declined
    if type(data) is np.ndarray:
        if data.size != count:
            raise Declined
        return as_float32(data).reshape(rows, n_features)
    if type(data) is not list or not data:
        raise Declined
    if type(data[0]) is list:
        data = _flatten_rows(data, rows, n_features)
    if len(data) != count:
        raise Declined
    flat = _small_flat(data) if count <= SMALL else _large_flat(data)
    return flat.reshape(rows, n_features)


def _flatten_rows(data: list[Any], rows: int, n_features: int) -> list[Any]:
    if len(data) != rows or any(type(row) is not list or len(row) != n_features for row in data):
        raise Declined
    return [value for row in data for value in row]


def _small_flat(data: list[Any]) -> np.ndarray:
    """A few plain numbers within float32's range: numpy converts them with no guard."""
    if (
        set(map(type, data)) <= _PY_NUMBERS
        and min(data) >= -_FLOAT32_MAX
        and max(data) <= _FLOAT32_MAX
    ):
        return np.array(data, dtype=_FLOAT32)
    raise Declined


def _large_flat(data: list[Any]) -> np.ndarray:
    """Many values: ``array.array`` takes only numbers, quicker than numpy's type discovery."""
    try:
        flat = np.frombuffer(array.array("d", data), dtype=np.float64)
    except (TypeError, OverflowError):
        raise Declined from None
    if _holds_bool(data, flat):  # array.array reads true and false as 1 and 0
        raise Declined
    return as_float32(flat)


def _holds_bool(data: list[Any], values: np.ndarray) -> bool:
    """Whether flat JSON ``data`` holds true or false: only cells read as 0 or 1 can."""
    zero_or_one = values == 0
    zero_or_one |= values == 1
    return any(type(data[i]) is bool for i in np.flatnonzero(zero_or_one).tolist())
