"""``ModelInfer`` requests and responses of the gRPC service: messages <-> arrays.

A request carries its one input tensor either as ``raw_input_contents`` (what
``tritonclient.grpc`` sends: little-endian bytes, row-major) or in the typed
``contents`` field of its datatype. Datatype and shape are checked as the REST codec
checks them (the same messages); the response carries the predictions as
``raw_output_contents``, as Triton answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pomona.runtime.serve.codec import RequestError, _checked
from pomona.runtime.serve.codec_fast import as_float32
from pomona.runtime.serve.proto import open_inference_grpc_pb2 as pb
from pomona.runtime.serve.snapshot import LoadedModel

__all__ = ["MAX_PLANS", "Plan", "decode_infer", "encode_infer", "make_plan", "split_raw"]

# The typed ``contents`` field that holds each datatype.
_CONTENTS = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
}


def decode_infer(request: Any, model: LoadedModel) -> np.ndarray:
    """The float32 ``[rows, features]`` of a ``ModelInferRequest``; :class:`RequestError` if bad."""
    io = model.io
    if len(request.inputs) != 1 or request.inputs[0].name != io.input_name:
        names = [tensor.name for tensor in request.inputs]
        raise RequestError(f"inputs are {names}; the model takes one input {io.input_name!r}")
    for wanted in request.outputs:
        if wanted.name != io.output_name:
            raise RequestError(
                f"unknown output {wanted.name!r}; the model returns one output {io.output_name!r}"
            )
    tensor = request.inputs[0]
    spec = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
    wire, rows = _checked(spec, io.n_features)
    count = rows * io.n_features
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise RequestError("raw_input_contents must hold one entry, for the one input")
        raw = request.raw_input_contents[0]
        if len(raw) != count * wire.itemsize:
            raise RequestError(
                f"input {tensor.name!r}: raw_input_contents has {len(raw)} bytes; shape "
                f"{spec['shape']} of {tensor.datatype} needs {count * wire.itemsize}"
            )
        values = np.frombuffer(raw, dtype=wire)
    else:
        data = getattr(tensor.contents, _CONTENTS[tensor.datatype])
        if len(data) != count:
            raise RequestError(
                f"input {tensor.name!r}: contents has {len(data)} values; shape "
                f"{spec['shape']} needs {count}"
            )
        values = np.asarray(data, dtype=wire)
    return as_float32(values).reshape(rows, io.n_features)


def encode_infer(predictions: np.ndarray, model: LoadedModel, request_id: str) -> Any:
    """The ``ModelInferResponse`` carrying ``predictions`` as raw little-endian FP32."""
    response = _response_head(model, predictions.shape, request_id)
    response.raw_output_contents.append(predictions.astype("<f4", copy=False).tobytes())
    return response


def _response_head(model: LoadedModel, shape: tuple[int, ...], request_id: str) -> Any:
    response = pb.ModelInferResponse(
        model_name=model.name, model_version=model.version, id=request_id
    )
    response.outputs.add(name=model.io.output_name, datatype="FP32", shape=shape)
    return response


# -- the fast path: a request like the one before it ------------------------------------------

# ``ModelInferRequest.raw_input_contents`` (field 7, length-delimited) and
# ``ModelInferResponse.raw_output_contents`` (field 6): their tags on the wire.
_RAW_INPUT_TAG = 7 << 3 | 2
_RAW_OUTPUT_TAG = 6 << 3 | 2
#: Plans kept; past it the table starts again (clients that vary the request id, say).
MAX_PLANS = 256


@dataclass(frozen=True)
class Plan:
    """What answering a request with a given head takes, once the reference path answered it.

    The head is the request up to its one ``raw_input_contents`` entry, its last field:
    model, version, id, input name, datatype and shape, the outputs asked for. ``prefix``
    is the response up to its raw output bytes.
    """

    model: LoadedModel
    #: The version asked for (None: the latest ready).
    version: str | None
    wire: np.dtype[Any]
    shape: tuple[int, int]
    nbytes: int
    prefix: bytes


def split_raw(payload: bytes) -> tuple[bytes, memoryview] | None:
    """A serialized request's head and its one raw input, when that is its last field.

    Every top-level field of a ``ModelInferRequest`` has a one-byte tag (field numbers
    below 16) and is length-delimited; anything else (another tag, a second raw entry,
    raw contents not last, bytes cut short) gives None, and the reference path answers.
    Lengths under 128 take one byte, the common case, read without a call.
    """
    end = len(payload)
    at = 0
    while at + 1 < end:
        start = at
        tag = payload[at]
        if tag & 0x87 != 2:  # a one-byte tag of a length-delimited field
            return None
        size = payload[at + 1]
        if size < 0x80:
            at += 2
        else:
            size, at = _varint(payload, at + 1)
        at += size
        if tag == _RAW_INPUT_TAG:
            return (payload[:start], memoryview(payload)[at - size : at]) if at == end else None
    return None


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """The varint at ``at`` and the offset after it; an offset past the end if cut short."""
    value = shift = 0
    for offset in range(at, min(len(data), at + 10)):
        byte = data[offset]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset + 1
        shift += 7
    return 0, len(data) + 1


def make_plan(model: LoadedModel, request: Any, predictions: np.ndarray) -> Plan:
    """The plan of ``request``, which the reference path answered with ``predictions``."""
    tensor = request.inputs[0]
    wire, rows = _checked(
        {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)},
        model.io.n_features,
    )
    head = _response_head(model, predictions.shape, request.id).SerializeToString()
    prefix = head + _encode_varint(_RAW_OUTPUT_TAG) + _encode_varint(predictions.size * 4)
    shape = (rows, model.io.n_features)
    nbytes = rows * model.io.n_features * wire.itemsize
    return Plan(model, request.model_version or None, wire, shape, nbytes, prefix)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
