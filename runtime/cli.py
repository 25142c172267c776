"""The ``pomona`` command line: one click group whose subcommands load lazily.

``pomona predict`` and ``pomona info`` must start without importing torch, so
each subcommand lives in its own module and is imported only when it runs.

Exit codes: 0 success; 1 a failure the user can act on (bad data, bad model,
unwritable output), printed as one line on stderr; 2 misuse of the command
line (unknown option, bad value), as click reports it.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

__all__ = ["main"]

# name -> (module:attribute, extra that brings its dependencies, one-line help)
_COMMANDS: dict[str, tuple[str, str | None, str]] = {
    "train": ("pomona.train.cli:train", "train", "Train a model on the crop data or a CSV."),
    "export": (
        "pomona.export.cli:export",
        "export",
        "Export a checkpoint to TorchScript and ONNX, proven equivalent.",
    ),
    "predict": ("pomona.runtime.predict_cli:predict", None, "Predict a batch file."),
    "info": ("pomona.runtime.predict_cli:info", None, "Show what a model expects and returns."),
    "serve": (
        "pomona.runtime.serve.cli:serve",
        "serve",
        "Serve a model over HTTP (Open Inference Protocol).",
    ),
}


def _missing_extra(name: str, extra: str, missing: str) -> click.Command:
    def run(**_: Any) -> None:
        raise click.ClickException(
            f"'pomona {name}' needs the '{extra}' extra ({missing} is not installed): "
            f"pip install 'pomona[{extra}]'"
        )

    return click.Command(
        name,
        callback=run,
        help=f"{_COMMANDS[name][2]} Needs: pip install 'pomona[{extra}]'.",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
    )


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        target, extra, _ = _COMMANDS[cmd_name]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if extra is None or (err.name or "").startswith("pomona"):
                raise
            return _missing_extra(cmd_name, extra, err.name or "a dependency")
        command: click.Command = getattr(module, attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Static one-liners: listing commands must not import torch.
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, _, help_) in _COMMANDS.items()])


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
# package_name: the version is looked up only when --version is given (start-up cost).
@click.version_option(package_name="pomona", prog_name="pomona")
def main() -> None:
    """Pomona: train a tabular regression model, export it, and serve it.

    \b
    Quick start:
      pomona train                      # bundled crop data -> artifacts/checkpoint.pt
      pomona export                     # -> artifacts/model.onnx, model.pt, manifest.json
      pomona predict artifacts/model.onnx rows.csv -o predictions.csv
      pomona serve artifacts/model.onnx # Open Inference Protocol on 127.0.0.1:8000

    Exit codes: 0 success, 1 a failure you can act on (message on stderr),
    2 a usage error.
    """


if __name__ == "__main__":  # ``python -m pomona.runtime.cli``
    main()
