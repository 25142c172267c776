"""Export a folded model to one self-contained, reproducible ONNX file.

The torch exporter (``torch.onnx.export(..., dynamo=True)``) records, on every
node and value, where it came from: Python stack traces with absolute source
paths, module class names, FX node text. :func:`strip_provenance` removes all of
it, so the file holds no path, user or host name and is byte-identical for
identical weights. The graph keeps only what serving needs: input ``features``
float32 ``[batch, F]``, output ``predictions`` float32 ``[batch, T]``, the
weights, and Pomona's ``metadata_props``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping

import onnx
import onnxscript  # noqa: F401  (the torch exporter needs it; fail early, at import, if missing)
import torch
from torch import nn

from pomona.runtime.artifacts import INPUT_NAME, OUTPUT_NAME
from pomona.runtime.errors import ArtifactError

__all__ = ["OPSET", "export_onnx", "serialize_onnx", "strip_provenance"]

#: ONNX opset of the exported graph. Gemm and Relu are unchanged since opset 14; 18 is
#: the oldest the torch exporter writes natively and loads in onnxruntime >= 1.14.
OPSET = 18
_EXAMPLE_BATCH = 2  # batch sizes 0 and 1 would be specialized by torch.export

# Messages the torch 2.13 exporter emits on every export that say nothing about the model.
_EXPORTER_WARNINGS = ((FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),)
_REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"


class _DropTorchvisionNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    log_filter = _DropTorchvisionNotice()
    logger = logging.getLogger(_REGISTRATION_LOGGER)
    logger.addFilter(log_filter)
    try:
        with warnings.catch_warnings():
            for category, message in _EXPORTER_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        logger.removeFilter(log_filter)


def _clear_value_info(values: Iterator[onnx.ValueInfoProto]) -> None:
    for value in values:
        del value.metadata_props[:]
        value.doc_string = ""


def _strip_graph(graph: onnx.GraphProto) -> None:
    del graph.metadata_props[:]
    graph.doc_string = ""
    _clear_value_info(iter(graph.input))
    _clear_value_info(iter(graph.output))
    _clear_value_info(iter(graph.value_info))
    for initializer in graph.initializer:
        del initializer.metadata_props[:]
        initializer.doc_string = ""
    for node in graph.node:
        _strip_node(node)


def _strip_node(node: onnx.NodeProto) -> None:
    del node.metadata_props[:]
    node.doc_string = ""
    for attribute in node.attribute:
        attribute.doc_string = ""
        if attribute.HasField("g"):
            _strip_graph(attribute.g)
        for subgraph in attribute.graphs:
            _strip_graph(subgraph)


def strip_provenance(model: onnx.ModelProto) -> None:
    """Remove, in place, every doc string and metadata entry the exporter recorded.

    That is ``metadata_props`` and ``doc_string`` on the model, the graph (and any
    subgraph), each node, attribute, value, initializer and function.
    """
    del model.metadata_props[:]
    model.doc_string = ""
    _strip_graph(model.graph)
    for function in model.functions:
        del function.metadata_props[:]
        function.doc_string = ""
        for node in function.node:
            _strip_node(node)


def export_onnx(
    model: nn.Module,
    n_features: int,
    metadata: Mapping[str, str],
    graph_name: str = "pomona",
) -> onnx.ModelProto:
    """Export ``model`` (raw features in) and return a checked ``ModelProto``.

    The batch dimension is symbolic (``batch``); ``metadata`` becomes the model's
    ``metadata_props`` (sorted by key). Raises :class:`ArtifactError` when the
    exporter fails or the result does not pass ``onnx.checker`` (full check).
    """
    example = torch.zeros(_EXAMPLE_BATCH, n_features)
    batch = torch.export.Dim("batch")
    with _quiet_exporter():
        try:
            program = torch.onnx.export(
                model.eval(),
                (example,),
                None,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                dynamic_shapes=({0: batch},),
                optimize=True,
                verbose=False,
            )
        except Exception as err:  # the exporter raises many unrelated types
            raise ArtifactError(f"the ONNX exporter failed: {err}") from err
    if program is None:  # pragma: no cover - only without dynamo
        raise ArtifactError("the ONNX exporter returned no program")
    proto = program.model_proto
    strip_provenance(proto)
    proto.graph.name = graph_name
    for key in sorted(metadata):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, metadata[key]
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ArtifactError(f"the exported ONNX model is not valid: {err}") from err
    return proto


def serialize_onnx(model: onnx.ModelProto) -> bytes:
    """The file's bytes, serialized deterministically."""
    return model.SerializeToString(deterministic=True)
