"""Read an ONNX file without the onnx package: the one protobuf reader of the runtime.

ONNX files are protobuf messages (``onnx/onnx.proto``). The runtime reads three things
from them without onnx or protobuf installed: the header (IR version, opsets, producer)
for ``pomona info``, the whole graph (nodes, float32 initializers, inputs, outputs,
``metadata_props``) for the numpy backend, and the external data files its tensors point
to, which the manifest check must cover (:func:`pomona.runtime.artifacts.check_manifest`).
All walk the bytes with :func:`fields`.
Anything this reader does not understand raises :class:`ValueError`; callers turn it
into an :class:`~pomona.runtime.errors.ArtifactError` naming the file.
"""

from __future__ import annotations

import posixpath
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Attribute",
    "Graph",
    "Node",
    "TensorInfo",
    "external_data_locations",
    "fields",
    "inside_folder",
    "read_graph",
    "read_header",
]

# ModelProto
_IR_VERSION, _PRODUCER_NAME, _PRODUCER_VERSION, _GRAPH, _OPSET_IMPORT = 1, 2, 3, 7, 8
_METADATA_PROPS = 14
# OperatorSetIdProto, StringStringEntryProto
_DOMAIN, _VERSION = 1, 2
_KEY, _VALUE = 1, 2
# GraphProto
_G_NAME = 2
_NODE, _INITIALIZER, _INPUT, _OUTPUT, _SPARSE_INITIALIZER = 1, 5, 11, 12, 15
# NodeProto
_N_INPUT, _N_OUTPUT, _N_OP_TYPE, _N_ATTRIBUTE, _N_DOMAIN = 1, 2, 4, 5, 7
# AttributeProto: name, f (float), i (int), s (bytes); other kinds are refused by name
_A_NAME, _A_F, _A_I, _A_S = 1, 2, 3, 4
_A_OTHER = {5: "tensor", 6: "graph", 7: "floats", 8: "ints", 9: "strings", 10: "tensors"}
# TensorProto
_T_DIMS, _T_DATA_TYPE, _T_FLOAT_DATA, _T_NAME, _T_RAW_DATA, _T_DATA_LOCATION = 1, 2, 4, 8, 9, 14
_FLOAT = 1  # TensorProto.DataType.FLOAT
# ValueInfoProto -> TypeProto -> TypeProto.Tensor -> TensorShapeProto -> Dimension
_V_NAME, _V_TYPE, _TYPE_TENSOR, _ELEM_TYPE, _SHAPE, _DIM = 1, 2, 1, 1, 2, 1
_DIM_VALUE, _DIM_PARAM = 1, 2
#: TensorProto data types by number, as onnxruntime spells them in ``tensor(...)``.
_TYPE_NAMES = {1: "float", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16",
               11: "double"}  # fmt: skip

Value = int | bytes


def _varint(data: bytes, pos: int) -> tuple[int, int]:
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


def fields(data: bytes) -> list[tuple[int, Value]]:
    """Top-level (field number, value) pairs of a protobuf message.

    Varints come back as unsigned ints, fixed32/fixed64 as their unsigned bits, and
    length-delimited fields (strings, bytes, sub-messages, packed arrays) as bytes.
    """
    found: list[tuple[int, Value]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: Value
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = int.from_bytes(data[pos : pos + size], "little"), pos + size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated message")
        found.append((number, value))
    return found


def _text(value: Value) -> str:
    if not isinstance(value, bytes):
        raise ValueError("expected a string field")
    return value.decode("utf-8")


def _message(value: Value) -> list[tuple[int, Value]]:
    if not isinstance(value, bytes):
        raise ValueError("expected a message field")
    return fields(value)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _ints(items: list[tuple[int, Value]], number: int) -> list[int]:
    """A repeated int64 field, packed (bytes) or not (one varint per entry)."""
    out: list[int] = []
    for key, value in items:
        if key != number:
            continue
        if isinstance(value, int):
            out.append(_signed(value))
            continue
        pos = 0
        while pos < len(value):
            item, pos = _varint(value, pos)
            out.append(_signed(item))
    return out


def read_header(data: bytes) -> dict[str, Any]:
    """IR version, opsets (domain -> version) and producer of a serialized ModelProto."""
    facts: dict[str, Any] = {"ir_version": None, "opset": {}, "producer": ""}
    producer = []
    for number, value in fields(data):
        if number == _IR_VERSION and isinstance(value, int):
            facts["ir_version"] = value
        elif number in (_PRODUCER_NAME, _PRODUCER_VERSION) and isinstance(value, bytes):
            producer.append(value.decode("utf-8", "replace"))
        elif number == _OPSET_IMPORT and isinstance(value, bytes):
            opset = dict(fields(value))
            domain = opset.get(_DOMAIN, b"")
            domain_name = domain.decode() if isinstance(domain, bytes) else ""
            facts["opset"][domain_name] = opset.get(_VERSION)
    facts["producer"] = " ".join(p for p in producer if p)
    return facts


# -- the graph ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, ``tensor(float)``-style type, shape (int or name)."""

    name: str
    type: str
    shape: list[int | str | None]


@dataclass(frozen=True)
class Attribute:
    """A node attribute this reader understands: a float, an int or a string."""

    name: str
    value: float | int | str | None
    kind: str  # "float", "int", "string", or the kind this reader does not read


@dataclass(frozen=True)
class Node:
    op_type: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    attributes: dict[str, Attribute]


@dataclass
class Graph:
    """What an ONNX file holds that the numpy backend runs."""

    nodes: list[Node] = field(default_factory=list)
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    opset: dict[str, int] = field(default_factory=dict)
    name: str = ""
    sparse: bool = False


def _attribute(data: bytes) -> Attribute:
    name, value, kind = "", None, "unknown"
    for number, item in fields(data):
        if number == _A_NAME:
            name = _text(item)
        elif number == _A_F and isinstance(item, int):
            value, kind = struct.unpack("<f", item.to_bytes(4, "little"))[0], "float"
        elif number == _A_I and isinstance(item, int):
            value, kind = _signed(item), "int"
        elif number == _A_S:
            value, kind = _text(item), "string"
        elif number in _A_OTHER:
            kind = _A_OTHER[number]
    return Attribute(name, value, kind)


def _node(data: bytes) -> Node:
    items = fields(data)
    attributes = [_attribute(v) for k, v in items if k == _N_ATTRIBUTE and isinstance(v, bytes)]
    return Node(
        op_type="".join(_text(v) for k, v in items if k == _N_OP_TYPE),
        domain="".join(_text(v) for k, v in items if k == _N_DOMAIN),
        inputs=[_text(v) for k, v in items if k == _N_INPUT],
        outputs=[_text(v) for k, v in items if k == _N_OUTPUT],
        attributes={a.name: a for a in attributes},
    )


def _tensor(data: bytes) -> tuple[str, np.ndarray]:
    """A float32 initializer, from ``raw_data`` (little-endian) or ``float_data``."""
    items = fields(data)
    name = "".join(_text(v) for k, v in items if k == _T_NAME)
    dtype = next((v for k, v in items if k == _T_DATA_TYPE), 0)
    if any(k == _T_DATA_LOCATION and v == 1 for k, v in items):
        raise ValueError(f"initializer {name!r} keeps its data in an external file")
    if dtype != _FLOAT:
        found = _TYPE_NAMES.get(dtype, str(dtype)) if isinstance(dtype, int) else "unknown"
        raise ValueError(f"initializer {name!r} is {found}, not float")
    dims = _ints(items, _T_DIMS)
    raw = b"".join(v for k, v in items if k == _T_RAW_DATA and isinstance(v, bytes))
    if not raw:  # float_data: packed (bytes) or one fixed32 per value
        raw = b"".join(
            v if isinstance(v, bytes) else v.to_bytes(4, "little")
            for k, v in items
            if k == _T_FLOAT_DATA
        )
    values = np.frombuffer(raw, dtype="<f4")
    if values.size != int(np.prod(dims, dtype=np.int64)):
        raise ValueError(f"initializer {name!r} has {values.size} values for shape {dims}")
    return name, values.astype(np.float32).reshape(dims)


def _value_info(data: bytes) -> TensorInfo:
    items = fields(data)
    name = "".join(_text(v) for k, v in items if k == _V_NAME)
    elem, shape = 0, []
    for key, value in items:
        if key != _V_TYPE:
            continue
        for tensor_key, tensor in _message(value):
            if tensor_key != _TYPE_TENSOR:
                continue
            for part, item in _message(tensor):
                if part == _ELEM_TYPE and isinstance(item, int):
                    elem = item
                elif part == _SHAPE:
                    shape = [_dimension(d) for k, d in _message(item) if k == _DIM]
    return TensorInfo(name, f"tensor({_TYPE_NAMES.get(elem, str(elem))})", shape)


def _dimension(value: Value) -> int | str | None:
    for key, item in _message(value):
        if key == _DIM_VALUE and isinstance(item, int):
            return _signed(item)
        if key == _DIM_PARAM:
            return _text(item)
    return None


def _read_graph_message(data: bytes, graph: Graph) -> None:
    for number, value in fields(data):
        if not isinstance(value, bytes):
            continue
        if number == _NODE:
            graph.nodes.append(_node(value))
        elif number == _INITIALIZER:
            name, array = _tensor(value)
            graph.initializers[name] = array
        elif number == _INPUT:
            graph.inputs.append(_value_info(value))
        elif number == _OUTPUT:
            graph.outputs.append(_value_info(value))
        elif number == _SPARSE_INITIALIZER:
            graph.sparse = True
        elif number == _G_NAME:
            graph.name = _text(value)


def read_graph(data: bytes) -> Graph:
    """The graph of a serialized ModelProto; graph inputs that are initializers are dropped."""
    graph = Graph()
    graph.opset = read_header(data)["opset"]
    for number, value in fields(data):
        if number == _GRAPH:
            if not isinstance(value, bytes):
                raise ValueError("the graph is not a message")
            _read_graph_message(value, graph)
        elif number == _METADATA_PROPS:
            entry = dict(_message(value))
            graph.metadata[_text(entry.get(_KEY, b""))] = _text(entry.get(_VALUE, b""))
    graph.inputs = [i for i in graph.inputs if i.name not in graph.initializers]
    return graph


# -- external data -----------------------------------------------------------------------

# Where tensors can sit, by message kind: field number -> kind of the child message.
_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 25: "function"},  # ModelProto: graph, functions
    "graph": {1: "node", 5: "tensor", 15: "sparse"},  # node, initializer, sparse_initializer
    "node": {5: "attribute"},
    # AttributeProto: t, g, tensors, graphs, sparse_tensor, sparse_tensors
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "function": {7: "node"},
    "sparse": {1: "tensor", 2: "tensor"},  # SparseTensorProto: values, indices
}
_T_EXTERNAL_DATA, _EXTERNAL = 13, 1  # TensorProto.external_data; data_location EXTERNAL
_ORT_FORMAT = b"ORTM"  # file identifier of an ORT-format (flatbuffers) model, at offset 4


def _external_location(tensor: bytes) -> tuple[bool, str | None]:
    external, location = False, None
    for number, value in fields(tensor):
        if number == _T_DATA_LOCATION and value == _EXTERNAL:
            external = True
        elif number == _T_EXTERNAL_DATA and isinstance(value, bytes):
            external = True
            entry = dict(fields(value))
            key, text = entry.get(_KEY), entry.get(_VALUE)
            if key == b"location":
                location = text.decode("utf-8", "replace") if isinstance(text, bytes) else ""
    return external, location


def external_data_locations(data: bytes) -> list[str]:
    """The external data files (``location``, as written) the tensors of a model point to.

    Every tensor is visited: graph initializers (dense and sparse), constant tensors in
    node attributes, subgraphs and functions. A tensor marked external without a
    location is listed as ``""``. ValueError when the file is not a readable ONNX
    protobuf; an ORT-format model has no external data and yields ``[]``.
    """
    if data[4:8] == _ORT_FORMAT:
        return []
    found: dict[str, None] = {}
    pending: list[tuple[str, bytes]] = [("model", data)]
    while pending:
        kind, message = pending.pop()
        if kind == "tensor":
            external, location = _external_location(message)
            if external:
                found[location or ""] = None
            continue
        children = _CHILDREN[kind]
        for number, value in fields(message):
            child = children.get(number)
            if child is not None and isinstance(value, bytes):
                pending.append((child, value))
    return list(found)


def inside_folder(location: str) -> bool:
    """Whether an external data ``location`` names a file in the model's own folder tree."""
    if not location or location.startswith(("/", "\\")) or ":" in location:
        return False
    normal = posixpath.normpath(location.replace("\\", "/"))
    return normal != ".." and not normal.startswith("../")
