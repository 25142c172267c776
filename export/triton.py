"""A Triton Inference Server model repository entry for the exported ONNX file.

Layout, loadable by Triton (and KServe's Triton runtime) as is, and served by
``pomona serve REPO``::

    REPO/<name>/config.pbtxt
    REPO/<name>/<version>/model.onnx     (and model.pt, manifest.json)

Each export publishes one version folder whole: it is written into a hidden staging
folder beside the versions, then renamed into place, so a server polling the
repository never sees a half-written version. By default the version is the next
number after the highest one there (1 in a new repository).

The configuration uses the onnxruntime backend with dynamic batching; the batch
dimension is implicit in Triton, so ``dims`` name the per-row shapes ``[F]`` and
``[T]``.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pomona.runtime.artifacts import INPUT_NAME, OUTPUT_NAME
from pomona.runtime.files import atomic_write_bytes

__all__ = [
    "CONFIG_FILE",
    "MAX_BATCH_SIZE",
    "VERSION",
    "config_pbtxt",
    "next_version",
    "place_entry",
    "stage_entry",
    "valid_model_name",
]

#: Largest batch Triton may form from queued requests (the largest batch size the
#: equivalence check runs).
MAX_BATCH_SIZE = 4096
#: The first model version folder.
VERSION = "1"
#: The model configuration, beside the version folder.
CONFIG_FILE = "config.pbtxt"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_VERSION = re.compile(r"[1-9][0-9]*")


def valid_model_name(name: str) -> bool:
    """A name that is one safe path component (letters, digits, ``_``, ``.``, ``-``)."""
    return _NAME.fullmatch(name) is not None and name not in {".", ".."}


def _quote(text: str) -> str:
    return json.dumps(text)  # a protobuf text-format string literal for plain names


def config_pbtxt(
    name: str,
    n_features: int,
    n_targets: int,
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
    max_batch_size: int = MAX_BATCH_SIZE,
) -> str:
    """``config.pbtxt`` text in Triton's ``ModelConfig`` protobuf text format."""
    return f"""name: {_quote(name)}
backend: "onnxruntime"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: {_quote(input_name)}
    data_type: TYPE_FP32
    dims: [ {n_features} ]
  }}
]
output [
  {{
    name: {_quote(output_name)}
    data_type: TYPE_FP32
    dims: [ {n_targets} ]
  }}
]
dynamic_batching {{ }}
version_policy: {{ latest: {{ num_versions: 1 }} }}
"""


def next_version(model_dir: Path) -> int:
    """One more than the highest numbered version folder in ``model_dir`` (1 if none)."""
    if not model_dir.is_dir():
        return 1
    versions = [int(p.name) for p in model_dir.iterdir() if _VERSION.fullmatch(p.name)]
    return max(versions, default=0) + 1


def stage_entry(
    repo: Path,
    name: str,
    files: Mapping[str, bytes],
    n_features: int,
    n_targets: int,
) -> Path:
    """Write the entry into a new hidden folder inside ``repo/name``; return that folder.

    ``files`` (file name -> bytes: the model, its manifest) go into its ``version``
    subfolder. :func:`place_entry` then renames that subfolder into place; the caller
    removes the staging folder afterwards (or after a failure).
    """
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    atomic_write_bytes(staged / CONFIG_FILE, config_pbtxt(name, n_features, n_targets).encode())
    (staged / "version").mkdir()
    for file, data in files.items():
        atomic_write_bytes(staged / "version" / file, data)
    return staged


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (``renameat2`` with ``RENAME_EXCHANGE``); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # a C library older than glibc 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # the file system cannot
        return False
    raise OSError(code, os.strerror(code), str(b))


def place_entry(staged: Path, model_dir: Path, version: int) -> list[Path]:
    """Rename the staged version folder into ``model_dir/version``, then the configuration.

    The version folder appears whole, in one rename. A version folder already there is
    swapped with the staged one in one step where the system can (Linux's
    ``renameat2(RENAME_EXCHANGE)``), so readers see the old folder or the new one, never
    none; elsewhere it is first renamed away. The old folder ends in the staging folder,
    removed with it.
    """
    target = model_dir / str(version)
    if not (target.exists() and _exchange(staged / "version", target)):
        if target.exists():
            os.replace(target, staged / "replaced")
        os.replace(staged / "version", target)
    os.replace(staged / CONFIG_FILE, model_dir / CONFIG_FILE)
    return [*(target / p.name for p in sorted(target.iterdir())), model_dir / CONFIG_FILE]
