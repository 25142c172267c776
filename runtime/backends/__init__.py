"""Where a model runs: onnxruntime, or numpy where onnxruntime is missing.

:func:`choose_backend` resolves ``auto|onnxruntime|numpy`` in one place (``auto``:
onnxruntime when it imports, numpy otherwise) and says why; :func:`open_backend`
loads a model with the chosen one. Both backends present the same :class:`Backend`:
a ``run`` callable with ``InferenceSession.run``'s signature, the graph's inputs and
outputs, its ``metadata_props`` and the execution providers.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pomona.runtime.errors import ArtifactError

if TYPE_CHECKING:  # numpy comes with them: not at the start of every command
    from pomona.runtime.artifacts import ExternalData
    from pomona.runtime.onnx_proto import TensorInfo

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendChoice",
    "BackendName",
    "choose_backend",
    "onnxruntime_missing",
    "open_backend",
]

BackendName = Literal["auto", "onnxruntime", "numpy"]
#: What ``backend=`` and ``--backend`` accept.
BACKENDS: tuple[str, ...] = ("auto", "onnxruntime", "numpy")
#: File name ending of onnxruntime's own (ORT) model format, which only onnxruntime reads.
ORT_SUFFIX = ".ort"


class BackendChoice(NamedTuple):
    """The backend a model runs on, and why (for ``pomona info``)."""

    name: Literal["onnxruntime", "numpy"]
    reason: str


@dataclass(frozen=True)
class Backend:
    """A loaded model, whichever backend runs it."""

    name: str
    #: ``run(output_names, {input_name: array}, None) -> [array, ...]``
    run: Callable[..., list[Any]]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    metadata: dict[str, str]
    #: The ONNX graph's name (``pomona export --name`` sets it).
    graph_name: str
    providers: list[str]
    #: The onnxruntime ``InferenceSession``, or the numpy backend's program.
    session: Any


@functools.cache
def onnxruntime_missing() -> str | None:
    """None when onnxruntime imports; else why not (the import error, one line)."""
    try:
        importlib.import_module("onnxruntime")
    except ImportError as err:
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


def choose_backend(requested: str = "auto", model: str | Path | None = None) -> BackendChoice:
    """Resolve ``auto|onnxruntime|numpy``; :class:`ArtifactError` when it cannot run here."""
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    ort_file = model is not None and Path(model).suffix == ORT_SUFFIX
    if requested == "numpy":
        if ort_file:
            raise ArtifactError(
                f"{model}: the numpy backend reads .onnx files, not onnxruntime's "
                f"{ORT_SUFFIX} format; use the .onnx model beside it"
            )
        return BackendChoice("numpy", "asked for")
    missing = onnxruntime_missing()
    if missing is None:
        why = "asked for" if requested == "onnxruntime" else "auto: onnxruntime imports"
        return BackendChoice("onnxruntime", why)
    if requested == "onnxruntime" or ort_file:
        raise ArtifactError(
            f"{model or 'the model'}: the onnxruntime backend is not available "
            f"({missing}); install onnxruntime, or use the numpy backend with a .onnx model"
        )
    return BackendChoice("numpy", f"auto: onnxruntime cannot be imported ({missing})")


def open_backend(
    path: Path,
    backend: str = "auto",
    *,
    intra_op_threads: int | None = None,
    allow_spinning: bool = True,
    providers: Sequence[str] | None = None,
    data: bytes | None = None,
    external: Sequence[ExternalData] = (),
) -> Backend:
    """Load ``path`` with the backend :func:`choose_backend` picks.

    ``data``: the model's bytes, already read (and checked against its manifest): the
    backend runs exactly these bytes instead of opening ``path`` again. ``external``: its
    external data files, read and checked likewise (the numpy backend refuses external
    data; onnxruntime runs these bytes where it can take them from memory).
    """
    choice = choose_backend(backend, path)
    if intra_op_threads is not None and intra_op_threads < 1:
        raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
    if choice.name == "numpy":
        from pomona.runtime.backends.numpy_backend import load_program

        program = load_program(path, data)
        return Backend(
            "numpy",
            program.run,
            program.inputs,
            program.outputs,
            program.metadata,
            program.graph_name,
            [],
            program,
        )
    from pomona.runtime.backends import ort_backend

    session = ort_backend.open_session(
        path,
        intra_op_threads=intra_op_threads,
        allow_spinning=allow_spinning,
        providers=providers,
        data=data,
        external={e.location: e.content for e in external},
    )
    inputs, outputs = ort_backend.tensors(session)
    meta = session.get_modelmeta()
    metadata = dict(meta.custom_metadata_map)
    run = ort_backend.fast_run(session)
    return Backend(
        "onnxruntime",
        run,
        inputs,
        outputs,
        metadata,
        meta.graph_name,
        list(session.get_providers()),
        session,
    )
