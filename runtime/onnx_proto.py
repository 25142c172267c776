"""A minimal reader of the ONNX protobuf: top-level fields and external-data references.

The runtime does not depend on the onnx package, yet two facts come straight from the
file: its header (IR version, opsets, producer: :mod:`pomona.runtime.model_info`) and
the external data files its tensors point to (the manifest check,
:func:`pomona.runtime.artifacts.check_manifest`, must cover every byte a prediction
depends on). Field numbers are those of ``onnx/onnx.proto``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

__all__ = ["external_data_locations", "fields", "inside_folder"]

Value = int | memoryview

# ModelProto: graph, functions
_MODEL = {7: "graph", 25: "function"}
# GraphProto: node, initializer, sparse_initializer
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
# NodeProto: attribute
_NODE = {5: "attribute"}
# AttributeProto: t, g, tensors, graphs, sparse_tensor, sparse_tensors
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
# FunctionProto: node
_FUNCTION = {7: "node"}
# SparseTensorProto: values, indices
_SPARSE = {1: "tensor", 2: "tensor"}
_CHILDREN = {
    "model": _MODEL,
    "graph": _GRAPH,
    "node": _NODE,
    "attribute": _ATTRIBUTE,
    "function": _FUNCTION,
    "sparse": _SPARSE,
}
# TensorProto: external_data (StringStringEntryProto: key 1, value 2), data_location
_EXTERNAL_DATA, _DATA_LOCATION, _EXTERNAL = 13, 14, 1
_ORT_FORMAT = b"ORTM"  # file identifier of an ORT-format (flatbuffers) model, at offset 4


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _skip_group(data: memoryview, pos: int, number: int) -> int:
    """Past the end-group tag of group ``number`` (a deprecated wire type, still valid)."""
    while True:
        key, pos = _varint(data, pos)
        if key & 7 == 4:
            if key >> 3 != number:
                raise ValueError("mismatched end of group")
            return pos
        pos = _value(data, pos, key)[1]


def _value(data: memoryview, pos: int, key: int) -> tuple[Value | None, int]:
    wire = key & 7
    if wire == 0:
        return _varint(data, pos)
    if wire == 2:
        length, pos = _varint(data, pos)
        end = pos + length
        if end > len(data):
            raise ValueError("truncated message")
        return data[pos:end], end
    if wire in (1, 5):
        size = 8 if wire == 1 else 4
        if pos + size > len(data):
            raise ValueError("truncated message")
        return int.from_bytes(data[pos : pos + size], "little"), pos + size
    if wire == 3:
        return None, _skip_group(data, pos, key >> 3)
    raise ValueError(f"unsupported wire type {wire}")


def fields(data: bytes | memoryview) -> Iterator[tuple[int, Value]]:
    """The top-level (field number, value) pairs of a protobuf message.

    Length-delimited values are zero-copy views; groups are skipped. ValueError when the
    message is truncated or malformed.
    """
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        key, pos = _varint(view, pos)
        value, pos = _value(view, pos, key)
        if value is not None:
            yield key >> 3, value


def _is_external(tensor: memoryview) -> tuple[bool, str | None]:
    external, location = False, None
    for number, value in fields(tensor):
        if number == _DATA_LOCATION and value == _EXTERNAL:
            external = True
        elif number == _EXTERNAL_DATA and isinstance(value, memoryview):
            external = True
            entry = dict(fields(value))
            key, text = entry.get(1), entry.get(2)
            if isinstance(key, memoryview) and bytes(key) == b"location":
                location = bytes(text).decode("utf-8", "replace") if text is not None else ""
    return external, location


def external_data_locations(data: bytes | memoryview) -> list[str]:
    """The external data files (``location``, as written) the tensors of a model point to.

    Every tensor is visited: graph initializers (dense and sparse), constant tensors in
    node attributes, subgraphs and functions. A tensor marked external without a
    location is listed as ``""``. ValueError when the file is not a readable ONNX
    protobuf; an ORT-format model has no external data and yields ``[]``.
    """
    view = memoryview(data)
    if bytes(view[4:8]) == _ORT_FORMAT:
        return []
    found: dict[str, None] = {}
    pending: list[tuple[str, memoryview]] = [("model", view)]
    while pending:
        kind, message = pending.pop()
        if kind == "tensor":
            external, location = _is_external(message)
            if external:
                found[location or ""] = None
            continue
        children = _CHILDREN[kind]
        for number, value in fields(message):
            child = children.get(number)
            if child is not None and isinstance(value, memoryview):
                pending.append((child, value))
    return list(found)


def inside_folder(location: str) -> bool:
    """Whether an external data ``location`` names a file in the model's own folder tree."""
    if not location or location.startswith(("/", "\\")) or ":" in location:
        return False
    normal = posixpath.normpath(location.replace("\\", "/"))
    return normal != ".." and not normal.startswith("../")
