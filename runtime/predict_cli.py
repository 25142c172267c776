"""``pomona predict`` and ``pomona info``: batch prediction and model inspection.

Imports click, numpy and onnxruntime only (pyarrow for Parquet, and when an input is
large and the ``fast`` extra is installed), so both start quickly and without torch.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from pomona.runtime.clikit import backend_option, clean_up_on_signals, echo_data, user_errors
from pomona.runtime.data import DEFAULT_BATCH_SIZE, FORMATS, MAX_LINE_BYTES

__all__ = ["info", "predict"]


def _keep_columns(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str]:
    if not value:
        return []
    names = [n.strip() for n in value.split(",")]
    if any(not n for n in names):
        raise click.BadParameter(f"empty column name in {value!r}; use COL,COL,...")
    return names


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(dir_okay=False, readable=False))
@click.argument("input", type=click.Path(readable=False, allow_dash=True))
@click.option(
    "-o",
    "--output",
    default="-",
    show_default=True,
    type=click.Path(allow_dash=True),
    help="Output file; '-' writes to stdout. Written to a temporary file and renamed "
    "on success, so a failure leaves no output file.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(list(FORMATS)),
    default=None,
    help="Output format. Default: from the output's extension (.csv, .jsonl, .ndjson, "
    ".npy, .parquet), else csv.",
)
@click.option(
    "--delimiter",
    type=click.Choice([",", ";", "|", "tab"]),
    default=None,
    help="CSV input delimiter. Default: the first of , tab ; | in the header line (tab for .tsv).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Rows read and predicted at a time; memory grows with it, not with the input.",
)
@click.option(
    "--keep",
    callback=_keep_columns,
    metavar="COL,...",
    help="Input columns copied to the output before the predictions (e.g. an ID).",
)
@click.option(
    "--max-line-bytes",
    type=click.IntRange(min=1),
    default=MAX_LINE_BYTES,
    show_default=True,
    help="Longest line (or quoted CSV record) of a CSV or JSON Lines input, in bytes; "
    "a longer one is an error, so memory stays bounded whatever the input.",
)
@click.option(
    "--no-manifest-check",
    is_flag=True,
    help="Use the model even if it differs from the manifest.json in its folder "
    "(see docs/artifacts.md for what is still checked).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="onnxruntime intra-op threads. Default: the CPUs this process may use.",
)
@backend_option
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: INPUT is a folder or glob of Parquet or CSV shards (or one file), OUTPUT a "
    "new folder of shards in input order, predicted on Ray Data (pomona[ray]; docs/scale.md).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="--engine ray: predicting workers.",
)
@click.option(
    "--address",
    default=None,
    help="--engine ray: the Ray cluster to join (ray start --head). Default: a local one.",
)
@user_errors
@clean_up_on_signals
def predict(
    model: str,
    input: str,
    output: str,
    output_format: str | None,
    delimiter: str | None,
    batch_size: int,
    keep: list[str],
    max_line_bytes: int,
    no_manifest_check: bool,
    threads: int | None,
    backend: str,
    engine: str,
    workers: int,
    address: str | None,
) -> None:
    """Predict every row of INPUT with MODEL (an ONNX file from `pomona export`).

    \b
    INPUT is CSV with a header (columns matched by name, in any order; others
    ignored), JSON Lines (one object per line), .npy ([rows, features]) or
    Parquet; '-' reads stdin. The format comes from the extension, else from the
    content; .gz, .zst, .bz2 and .xz files are decompressed.
    Output columns: the --keep columns, then one column per model output.
    Floats are written in the shortest form that reads back as the same float32.
    The output may not be the input file. On SIGINT or SIGTERM no output or
    temporary file is left behind.
    """
    from pomona.runtime.data import predict_file
    from pomona.runtime.predictor import Predictor

    if engine == "ray":
        from pomona.runtime.predict_ray import predict_with_ray

        predict_with_ray(
            model,
            input,
            output,
            output_format=output_format,
            workers=workers,
            address=address,
            batch_size=batch_size,
            keep=keep,
            threads=threads,
            delimiter="\t" if delimiter == "tab" else delimiter,
            check_manifest=not no_manifest_check,
        )
        return
    predictor = Predictor(
        model, check_manifest=not no_manifest_check, intra_op_threads=threads, backend=backend
    )
    options: dict[str, Any] = {
        "output_format": output_format,
        "delimiter": "\t" if delimiter == "tab" else delimiter,
        "batch_size": batch_size,
        "keep": keep,
        "max_line_bytes": max_line_bytes,
    }
    size = _file_size(input)
    if size is None or not sys.stderr.isatty():
        predict_file(predictor, input, output, **options)
        return
    with click.progressbar(length=size, label="predicting", file=sys.stderr) as bar:
        shown = 0

        def progress(consumed: int, total: int | None) -> None:
            nonlocal shown
            bar.update(consumed - shown)
            shown = consumed

        predict_file(predictor, input, output, progress=progress, **options)


def _file_size(path: str) -> int | None:
    """Size of a regular input file (the progress bar's length); None for stdin or pipes."""
    if path == "-":
        return None
    try:
        return os.path.getsize(path) if os.path.isfile(path) else None
    except OSError:
        return None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(dir_okay=False, readable=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@backend_option
@user_errors
def info(model: str, as_json: bool, backend: str) -> None:
    """Show what MODEL expects and returns, its metadata, opset, manifest status and
    the backend that would run it, and why.

    MODEL is loaded as `pomona predict` loads it: a model whose output for one row
    differs from the shape it declares is refused.
    """
    from pomona.runtime.model_info import describe

    facts = describe(model, backend)
    if as_json:
        echo_data(json.dumps(facts, indent=2))
        return
    echo_data(_render(facts))


def _render(facts: dict[str, Any]) -> str:
    lines = [f"model      {facts['path']}", f"sha256     {facts['sha256']}"]
    lines.append(f"manifest   {facts['manifest']['status']}: {facts['manifest']['detail']}")
    if facts["format"] == "ort":
        lines.append("format     ORT (onnxruntime's own format: no ONNX IR version or opset)")
    else:
        lines.append(f"ir/opset   IR {facts['ir_version']}, opset {_opsets(facts['opset'])}")
    lines.append(f"backend    {facts['backend']['name']} ({facts['backend']['reason']})")
    if facts.get("producer"):
        lines.append(f"producer   {facts['producer']}")
    for kind in ("inputs", "outputs"):
        for tensor in facts[kind]:
            shape = "[" + ", ".join(str(d) for d in tensor["shape"]) + "]"
            lines.append(f"{kind[:-1]:<10} {tensor['name']} {tensor['type']} {shape}")
    lines.append(f"features   {', '.join(facts['feature_names'])}")
    lines.append(f"targets    {', '.join(facts['target_names'])}")
    lines.append("metadata")
    for key, value in sorted(facts["metadata"].items()):
        lines.append(f"  {key} = {value}")
    return "\n".join(lines)


def _opsets(opset: dict[str, int]) -> str:
    if not opset:
        return "unknown"
    return ", ".join(f"{domain or 'ai.onnx'} {version}" for domain, version in opset.items())
