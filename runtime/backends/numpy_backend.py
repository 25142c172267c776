"""The numpy backend: Pomona's exported graphs evaluated with numpy alone.

``pomona export`` writes a chain of a few operators: ``Gemm`` and ``Relu`` for the
layers, ``Sub``/``Div`` before the first ``Gemm`` when the feature standardization stays
unfolded, ``Mul``/``Add`` after the last when the target one does. This module reads
``model.onnx`` itself (with :mod:`pomona.runtime.onnx_proto`, no onnx or protobuf
package), compiles the nodes into numpy calls once, and refuses any graph with an
operator, attribute, domain or initializer outside that set, naming it.

Evaluation is float32 throughout, on values laid out feature-major (``[features,
rows]``, the transpose of the graph's ``[rows, features]``): ``Gemm`` is then one
``matmul`` of the weight matrix as ONNX stores it (``[out, in]``) by the rows, which BLAS
runs many times faster than ``rows @ weights.T`` when a layer has few columns, and the
bias (a column) is added in place; ``Relu`` is ``np.maximum(x, 0, out=x)``; elementwise
operators write into their input when no other node reads it. Large inputs run in
chunks of :data:`CHUNK_ROWS` rows, whose intermediates stay in the CPU cache and whose
products stay under the size at which OpenBLAS starts threads for one call (threads
that cost more than they save on small products, and far more on a busy machine).
Nothing is kept between calls, so one program is safe to call from several threads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pomona.runtime.errors import ArtifactError
from pomona.runtime.onnx_proto import Graph, Node, TensorInfo, read_graph

__all__ = ["CHUNK_ROWS", "SUPPORTED_OPS", "NumpyProgram", "load_program"]

#: Rows evaluated at a time (see the module docstring).
CHUNK_ROWS = 1024

_ELEMENTWISE: dict[str, Any] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
}
#: The operators the numpy backend runs (default ONNX domain), and the attributes each may have.
SUPPORTED_OPS: dict[str, frozenset[str]] = {
    "Gemm": frozenset({"alpha", "beta", "transA", "transB"}),
    "Relu": frozenset(),
    **{name: frozenset() for name in _ELEMENTWISE},
}
_OPS_TEXT = ", ".join(sorted(SUPPORTED_OPS))

Values = dict[str, np.ndarray]
Step = Callable[[Values], np.ndarray]


class _Refused(ValueError):
    """A graph the numpy backend does not run; the message names what and where."""


class NumpyProgram:
    """A compiled graph: ``run`` has ``InferenceSession.run``'s signature (names, feeds)."""

    def __init__(self, graph: Graph, steps: list[tuple[Step, str]]) -> None:
        self.graph = graph
        self.inputs: list[TensorInfo] = graph.inputs
        self.outputs: list[TensorInfo] = graph.outputs
        self.metadata: dict[str, str] = graph.metadata
        self.graph_name: str = graph.name
        self._steps = steps

    def run(
        self, output_names: Sequence[str], feeds: Mapping[str, np.ndarray], _options: Any = None
    ) -> list[np.ndarray]:
        """Evaluate the graph on ``feeds`` (``[rows, F]`` each); return the named outputs."""
        rows = min(np.shape(x)[0] for x in feeds.values())
        if rows <= CHUNK_ROWS:
            values = self._evaluate(feeds, slice(None))
            return [np.ascontiguousarray(values[name].T) for name in output_names]
        outputs: list[np.ndarray] = []
        for start in range(0, rows, CHUNK_ROWS):
            part = slice(start, start + CHUNK_ROWS)
            values = self._evaluate(feeds, part)
            if not outputs:
                outputs = [np.empty((rows, len(values[n])), np.float32) for n in output_names]
            for out, name in zip(outputs, output_names, strict=True):
                out[part] = values[name].T
        return outputs

    def _evaluate(self, feeds: Mapping[str, np.ndarray], rows: slice) -> Values:
        """Every value of the graph for ``rows`` of the feeds, feature-major."""
        values: Values = {name: x[rows].T for name, x in feeds.items()}
        for step, output in self._steps:
            values[output] = step(values)
        return values


def load_program(path: Path, data: bytes | None = None) -> NumpyProgram:
    """Read and compile ``path`` (``data``: its bytes, already read); :class:`ArtifactError`
    when it cannot be read or run."""
    try:
        graph = read_graph(path.read_bytes() if data is None else data)
    except ValueError as err:
        raise ArtifactError(
            f"{path}: not a valid ONNX model (empty, truncated or corrupt?): {err}"
        ) from err
    except OSError as err:
        raise ArtifactError(f"{path}: cannot read the model: {err}") from err
    if not graph.nodes and not graph.outputs:
        raise ArtifactError(f"{path}: not a valid ONNX model (empty, truncated or corrupt?)")
    try:
        return NumpyProgram(graph, _compile(graph))
    except _Refused as err:
        raise ArtifactError(
            f"{path}: the numpy backend cannot run this model: {err} "
            f"(it runs {_OPS_TEXT}: the graphs pomona export writes); "
            "use the onnxruntime backend for it"
        ) from err


def _compile(graph: Graph) -> list[tuple[Step, str]]:
    if graph.sparse:
        raise _Refused("sparse initializers")
    domains = sorted(d for d in graph.opset if d not in ("", "ai.onnx"))
    if domains:
        raise _Refused(f"operator set domain {domains[0]!r}")
    readers: dict[str, int] = {}
    for node in graph.nodes:
        for name in node.inputs:
            readers[name] = readers.get(name, 0) + 1
    for info in graph.outputs:  # a graph output is read by the caller: never overwritten
        readers[info.name] = readers.get(info.name, 0) + 1
    known = {info.name for info in graph.inputs}
    produced: set[str] = set()
    steps = []
    for node in graph.nodes:
        _check_node(node, graph, known | produced)
        first = node.inputs[0]
        owned = first in produced and readers.get(first, 0) == 1
        steps.append((_step(node, graph.initializers, owned), node.outputs[0]))
        produced.update(node.outputs)
    missing = [info.name for info in graph.outputs if info.name not in produced | known]
    if missing:
        raise _Refused(f"output {missing[0]!r} is computed by no node")
    return steps


def _check_node(node: Node, graph: Graph, available: set[str]) -> None:
    what = f"operator {node.op_type!r}"
    if node.domain not in ("", "ai.onnx"):
        raise _Refused(f"{what} of domain {node.domain!r}")
    if node.op_type not in SUPPORTED_OPS:
        raise _Refused(what)
    for name, attribute in node.attributes.items():
        if name not in SUPPORTED_OPS[node.op_type] or attribute.kind not in ("int", "float"):
            raise _Refused(f"attribute {name!r} of {what}")
    if len(node.outputs) != 1:
        raise _Refused(f"{what} with {len(node.outputs)} outputs")
    wanted = {"Relu": (1, 1), "Gemm": (2, 3)}.get(node.op_type, (2, 2))
    if not wanted[0] <= len(node.inputs) <= wanted[1]:
        raise _Refused(f"{what} with {len(node.inputs)} inputs")
    for name in node.inputs:
        if name and name not in available and name not in graph.initializers:
            raise _Refused(f"input {name!r} of {what} is computed by no earlier node")


def _column(name: str, value: np.ndarray) -> np.ndarray:
    """A constant laid out for feature-major values: ``[K]`` or ``[1, K]`` becomes ``[K, 1]``."""
    if value.ndim == 0 or value.size == 1:
        return value.reshape(())
    if value.ndim == 1 or (value.ndim == 2 and value.shape[0] == 1):
        return np.ascontiguousarray(value.reshape(-1, 1), dtype=np.float32)
    raise _Refused(f"constant {name!r} of shape {list(value.shape)} (one value per row)")


def _step(node: Node, constants: Mapping[str, np.ndarray], owned: bool) -> Step:
    if node.op_type == "Gemm":
        return _gemm(node, constants)
    source = node.inputs[0]
    if node.op_type == "Relu":
        if owned:
            return lambda v: np.maximum(v[source], 0, out=v[source])
        return lambda v: np.maximum(v[source], np.float32(0))
    ufunc, other = _ELEMENTWISE[node.op_type], node.inputs[1]
    if source in constants and other in constants:
        raise _Refused(f"operator {node.op_type!r} on two constants")
    if source in constants:
        left = _column(source, constants[source])
        return lambda v: ufunc(left, v[other])
    if other in constants:
        right = _column(other, constants[other])
        if owned:
            return lambda v: ufunc(v[source], right, out=v[source])
        return lambda v: ufunc(v[source], right)
    return lambda v: ufunc(v[source], v[other])


def _gemm(node: Node, constants: Mapping[str, np.ndarray]) -> Step:
    """``alpha * A @ op(B) + beta * C`` with ``B`` and ``C`` constants, feature-major:
    ``alpha * op(B).T @ A.T + beta * C.T``."""
    attributes = {name: a.value for name, a in node.attributes.items()}
    if attributes.get("transA", 0):
        raise _Refused("attribute 'transA' of operator 'Gemm' other than 0")
    source, weight_name = node.inputs[0], node.inputs[1]
    bias_name = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    if weight_name not in constants or (bias_name is not None and bias_name not in constants):
        raise _Refused("operator 'Gemm' with weights that are not initializers")
    weight = constants[weight_name]
    if weight.ndim != 2:
        raise _Refused(f"operator 'Gemm' with a {weight.ndim}-dimensional weight")
    matrix = np.ascontiguousarray(weight if attributes.get("transB", 0) else weight.T)
    alpha = np.float32(attributes.get("alpha", 1.0) or 0.0)
    beta = np.float32(attributes.get("beta", 1.0) or 0.0)
    bias = None
    if bias_name is not None:
        bias = constants[bias_name] if beta == 1 else (beta * constants[bias_name])
        bias = _column(bias_name, bias.astype(np.float32))

    def step(values: Values) -> np.ndarray:
        out = np.matmul(matrix, values[source])
        if alpha != 1:
            out *= alpha
        if bias is not None:
            out += bias
        return out

    return step
