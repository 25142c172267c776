"""``ModelInfer`` requests and responses of the gRPC service: messages <-> arrays.

A request carries its one input tensor either as ``raw_input_contents`` (what
``tritonclient.grpc`` sends: little-endian bytes, row-major) or in the typed
``contents`` field of its datatype. Datatype and shape are checked as the REST codec
checks them (the same messages); the response carries the predictions as
``raw_output_contents``, as Triton answers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pomona.runtime.serve.codec import RequestError, _checked
from pomona.runtime.serve.codec_fast import as_float32
from pomona.runtime.serve.proto import open_inference_grpc_pb2 as pb
from pomona.runtime.serve.snapshot import LoadedModel

__all__ = ["decode_infer", "encode_infer"]

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
    response = pb.ModelInferResponse(
        model_name=model.name, model_version=model.version, id=request_id
    )
    response.outputs.add(name=model.io.output_name, datatype="FP32", shape=predictions.shape)
    response.raw_output_contents.append(predictions.astype("<f4", copy=False).tobytes())
    return response
