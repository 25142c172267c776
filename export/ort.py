"""``pomona export --ort``: the model in onnxruntime's ORT format, with its operator list.

onnxruntime's own converter (``python -m onnxruntime.tools.convert_onnx_models_to_ort``)
turns ``model.onnx`` into ``model.ort``, the format onnxruntime's minimal builds read,
and writes the operators the model needs, the ``--include_ops_by_config`` input of
onnxruntime's ``build.sh`` for a build with only those kernels. The converter runs in a
subprocess (it prints progress on stdout) on a copy of the model in a temporary folder;
the file list it writes in the config's comments is replaced by the artifact's own name,
so no local path reaches the artifacts.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from pomona.runtime.artifacts import ONNX_FILE, ORT_CONFIG_FILE, ORT_FILE
from pomona.runtime.errors import ArtifactError

__all__ = ["CONVERTER", "OPTIMIZATION_STYLE", "convert_to_ort"]

#: The converter module, run with ``python -m``.
CONVERTER = "onnxruntime.tools.convert_onnx_models_to_ort"
#: ``Fixed``: optimizations applied at conversion, so the model runs as converted.
OPTIMIZATION_STYLE = "Fixed"
_CONVERT_TIMEOUT_S = 600.0


def convert_to_ort(onnx_bytes: bytes) -> dict[str, bytes]:
    """``{model.ort: bytes, required_operators.config: bytes}`` for a serialized ONNX model.

    Raises :class:`ArtifactError` when onnxruntime is not installed or the converter fails.
    """
    with tempfile.TemporaryDirectory(prefix="pomona-ort-") as folder:
        work = Path(folder)
        (work / ONNX_FILE).write_bytes(onnx_bytes)
        out = work / "ort"
        command = [sys.executable, "-m", CONVERTER, str(work / ONNX_FILE), "--output_dir",
                   str(out), "--optimization_style", OPTIMIZATION_STYLE]  # fmt: skip
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=_CONVERT_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise ArtifactError(f"onnxruntime's ORT converter did not run: {err}") from err
        stem = Path(ONNX_FILE).stem
        model, config = out / f"{stem}.ort", out / f"{stem}.required_operators.config"
        if done.returncode != 0 or not model.is_file() or not config.is_file():
            lines = (done.stderr or done.stdout).strip().splitlines()
            reason = lines[-1] if lines else f"exit status {done.returncode}"
            if "No module named 'onnxruntime" in done.stderr:
                reason = "onnxruntime is not installed (pip install onnxruntime)"
            raise ArtifactError(f"cannot write {ORT_FILE}: {reason}")
        return {ORT_FILE: model.read_bytes(), ORT_CONFIG_FILE: _without_paths(config.read_text())}


def _without_paths(config: str) -> bytes:
    """The config with the converter's list of source files replaced by ``model.ort``."""
    lines = []
    for line in config.splitlines():
        if line.startswith("# - "):
            line = f"# - {ORT_FILE}"
        lines.append(line)
    return ("\n".join(lines) + "\n").encode()
