"""The ``pomona`` command line: one click group whose subcommands load lazily.

``pomona predict`` and ``pomona info`` must start without importing torch, so
each subcommand lives in its own module and is imported only when it runs.

Exit codes: 0 success; 1 a failure the user can act on (bad data, bad model,
unwritable output), printed as one line on stderr; 2 misuse of the command
line (unknown option, bad value), as click reports it.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, NamedTuple

import click

__all__ = ["COMMANDS", "Command", "install_hint", "main"]


class Command(NamedTuple):
    """One ``pomona`` subcommand: where it lives, its one-line help, the extra it needs."""

    #: ``module:attribute``, imported only when the command runs.
    target: str
    #: Shown by ``pomona --help`` (listing commands must not import them).
    help: str
    #: The extra (``pip install 'pomona[EXTRA]'``) that brings its dependencies.
    extra: str | None = None
    #: Modules of that extra the command cannot start without (found, not imported).
    needs: tuple[str, ...] = ()

    def missing(self) -> list[str]:
        """The modules in :attr:`needs` that are not installed."""
        return [name for name in self.needs if not _installed(name)]


#: Every subcommand, and which extra it needs: the one place that decides it.
COMMANDS: dict[str, Command] = {
    "train": Command(
        "pomona.train.cli:train", "Train a model on the crop data or a CSV.", "train", ("torch",)
    ),
    "export": Command(
        "pomona.export.cli:export",
        "Export a checkpoint to TorchScript and ONNX, proven equivalent.",
        "export",
        ("torch", "onnx", "onnxscript"),
    ),
    "predict": Command("pomona.runtime.predict_cli:predict", "Predict a batch file."),
    "info": Command("pomona.runtime.predict_cli:info", "Show what a model expects and returns."),
    "serve": Command(
        "pomona.runtime.serve.cli:serve",
        "Serve a model over HTTP (Open Inference Protocol).",
        "serve",
        ("uvicorn", "orjson", "prometheus_client"),
    ),
}


def install_hint(extra: str) -> str:
    """The command that installs ``extra``."""
    return f"pip install 'pomona[{extra}]'"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _missing_extra(name: str, command: Command, missing: str) -> click.Command:
    extra = command.extra or ""

    def run(**_: Any) -> None:
        raise click.ClickException(
            f"'pomona {name}' needs the '{extra}' extra ({missing} is not installed): "
            f"{install_hint(extra)}"
        )

    return click.Command(
        name,
        callback=run,
        help=f"{command.help} Needs: {install_hint(extra)}.",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
    )


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = COMMANDS.get(cmd_name)
        if command is None:
            return None
        missing = command.missing()
        if missing:
            return _missing_extra(cmd_name, command, missing[0])
        module_name, attr = command.target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:  # a dependency of a dependency
            if command.extra is None or (err.name or "").startswith("pomona"):
                raise
            return _missing_extra(cmd_name, command, err.name or "a dependency")
        found: click.Command = getattr(module, attr)
        return found

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Static one-liners: listing commands must not import torch.
        with formatter.section("Commands"):
            formatter.write_dl([(name, command.help) for name, command in COMMANDS.items()])


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
