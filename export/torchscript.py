"""TorchScript: script the folded model with ``torch.jit.script`` and save it.

Scripting compiles the module's code rather than recording one run with an
example input (tracing). Two things follow: nothing about an example input can
be baked in, and the archive is reproducible. A traced archive stores the
Python call stack of the tracing call (which differs between the command line
and a test run); a scripted one stores only the compiled source.

One detail keeps the scripted archive byte-identical between processes:
``nn.Linear`` declares ``__constants__`` that TorchScript records in Python set
order, which changes with string hash randomization. The folded model is
therefore scripted with :class:`_FrozenLinear` layers (the same weights, the
same ``F.linear``) and declares no constants.

``torch.jit`` is deprecated in torch 2.13; each call here ignores exactly that
deprecation message and nothing else.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from pomona.runtime.errors import ArtifactError
from pomona.train.model import Destandardize, Standardize

__all__ = ["load_torchscript", "torchscript_bytes"]

_JIT_DEPRECATION = (
    r"`torch\.jit\.script` is deprecated\. Please switch to `torch\.compile` or `torch\.export`\.$"
    r"|`torch\.jit\.(save|load)` is deprecated\. Please switch to `torch\.export`\.$"
)


@contextlib.contextmanager
def _jit_deprecation_ignored() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=DeprecationWarning)
        yield


class _FrozenLinear(nn.Module):
    """``nn.Linear`` without ``__constants__``: ``F.linear(x, weight, bias)``."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
        bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def _scriptable(model: nn.Sequential) -> nn.Sequential:
    layers: list[nn.Module] = []
    for layer in model:
        if isinstance(layer, nn.Linear):
            layers.append(_FrozenLinear(layer))
        elif isinstance(layer, nn.ReLU):
            layers.append(nn.ReLU())
        elif isinstance(layer, Standardize | Destandardize):  # kept unfolded (see fold.py)
            layers.append(copy.deepcopy(layer))
        else:
            raise ArtifactError(f"cannot script a {type(layer).__name__} layer")
    return nn.Sequential(*layers).eval()


def torchscript_bytes(model: nn.Sequential) -> bytes:
    """Script a folded ``Linear``/``ReLU`` model and return the saved archive's bytes."""
    buffer = io.BytesIO()
    with _jit_deprecation_ignored():
        try:
            scripted = torch.jit.script(_scriptable(model))
        except ArtifactError:
            raise
        except Exception as err:  # TorchScript's frontend raises many types
            raise ArtifactError(f"TorchScript cannot compile the model: {err}") from err
        torch.jit.save(scripted, buffer)
    return buffer.getvalue()


def load_torchscript(source: str | os.PathLike[str] | bytes) -> torch.jit.ScriptModule:
    """Load a saved TorchScript archive (a file or its bytes) on CPU, in eval mode."""
    what = "TorchScript bytes" if isinstance(source, bytes) else os.fspath(source)
    with _jit_deprecation_ignored():
        try:
            if isinstance(source, bytes):
                module = torch.jit.load(io.BytesIO(source), map_location="cpu")
            else:
                module = torch.jit.load(os.fspath(source), map_location="cpu")
        except (RuntimeError, ValueError, OSError) as err:
            raise ArtifactError(f"{what}: not a loadable TorchScript archive: {err}") from err
    return module.eval()
