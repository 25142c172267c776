"""``pomona export``: checkpoint -> model.onnx, model.pt, manifest.json, optionally for Triton."""

from __future__ import annotations

from pathlib import Path

import click

from pomona.export.equivalence import EquivalenceReport
from pomona.export.exporter import export_checkpoint
from pomona.export.triton import valid_model_name
from pomona.runtime.artifacts import (
    CHECKPOINT_FILE,
    DEFAULT_FOLDER,
    MANIFEST_FILE,
    ONNX_FILE,
    ORT_CONFIG_FILE,
    ORT_FILE,
    TORCHSCRIPT_FILE,
)
from pomona.runtime.clikit import clean_up_on_signals, say, user_errors

__all__ = ["export"]


def _model_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not valid_model_name(value):
        raise click.BadParameter("use letters, digits, '_', '.' or '-' (one folder name)")
    return value


def report_lines(report: EquivalenceReport) -> list[str]:
    """A few lines summarizing an equivalence report for the terminal."""
    sizes = ", ".join(map(str, report.batch_sizes))
    source = (
        f"{report.training_rows} training + {report.random_rows} random rows"
        if report.training_rows
        else f"{report.random_rows} random rows (training data not found)"
    )
    lines = [
        f"Equivalence with the trained model (eager, unfolded) on {source}, "
        f"batch sizes {sizes}; tolerance atol={report.atol:g}, rtol={report.rtol:g} "
        "scaled to the output:"
    ]
    for check in report.checks:
        verdict = "ok" if check.passed else "FAILED"
        lines.append(
            f"  {check.artifact:<18}  max abs diff {check.max_abs_diff:.3g}  "
            f"max rel diff {check.max_rel_diff:.3g}  "
            f"({check.worst_fraction_of_tolerance:.3g} of tolerance)  {verdict}"
        )
    return lines


@click.command("export")
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path(DEFAULT_FOLDER, CHECKPOINT_FILE),
    show_default=True,
    help="Checkpoint written by 'pomona train'.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Folder for {ONNX_FILE}, {TORCHSCRIPT_FILE} and {MANIFEST_FILE}  "
    "[default: the checkpoint's folder]",
)
@click.option(
    "--name",
    default="pomona",
    show_default=True,
    callback=_model_name,
    help="Model name: the ONNX graph name, in the manifest, and the Triton model folder.",
)
@click.option(
    "--triton-repo",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write a Triton model repository entry: DIR/NAME/config.pbtxt and the "
    f"version folder DIR/NAME/VERSION/ ({ONNX_FILE}, {TORCHSCRIPT_FILE}, {MANIFEST_FILE}), "
    "which appears whole.",
)
@click.option(
    "--triton-version",
    type=click.IntRange(min=1),
    default=None,
    help="Version folder for --triton-repo (replaced if there). [default: the next version]",
)
@click.option(
    "--ort",
    is_flag=True,
    help=f"Also write {ORT_FILE} (onnxruntime's ORT format, for its minimal builds) and "
    f"{ORT_CONFIG_FILE} (the operators it needs, for a reduced onnxruntime build).",
)
@user_errors
@clean_up_on_signals
def export(
    checkpoint: Path,
    out: Path | None,
    name: str,
    triton_repo: Path | None,
    triton_version: int | None,
    ort: bool,
) -> None:
    """Export a checkpoint to ONNX and TorchScript, proven equivalent to the trained model.

    Folds the standardization into the first layer, writes model.onnx, model.pt
    and manifest.json, checks both artifacts against the trained model on the
    training data plus random rows (model.onnx with both runtime backends,
    onnxruntime and numpy), and moves the files into place only if every
    check passes. A failed export leaves earlier files untouched.
    """
    result = export_checkpoint(
        checkpoint, out, name=name, triton_repo=triton_repo, triton_version=triton_version, ort=ort
    )
    graph = ", ".join(result.onnx_ops)
    say(f"Wrote {', '.join(str(path) for path in result.files)}")
    say(f"ONNX graph: {graph}")
    if result.fold_note:
        say(f"Note: {result.fold_note}")
    for line in report_lines(result.report):
        say(line)
