"""Write ``docs/commands.md`` from the ``--help`` text of every ``pomona`` command.

The commands reference is generated, never edited by hand, so it cannot drift
from the command line: ``make docs`` rewrites it, and a test fails when the file
differs from what this script would write.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.testing import CliRunner

from pomona.runtime.cli import main as pomona

DOC = Path(__file__).resolve().parent.parent / "docs" / "commands.md"
WIDTH = 88

_HEADER = """\
# Command reference

Generated from `pomona --help` and each command's `--help` by
`tools/commands_doc.py` (`make docs`); a test checks that this file matches the
command line, so edit the help texts, not this page.

Exit status, for every command: 0 success; 1 a failure you can act on (bad
data, bad model, unwritable output), reported as one `Error: ...` line on
stderr with no traceback; 2 a usage error (unknown option, bad value). Data goes
to stdout, messages to stderr.
"""


def help_text(*args: str) -> str:
    """What ``pomona ARGS --help`` prints, at a fixed width."""
    result = CliRunner().invoke(pomona, [*args, "--help"], prog_name="pomona", terminal_width=WIDTH)
    if result.exit_code != 0:
        raise RuntimeError(f"pomona {' '.join(args)} --help failed: {result.output}")
    return result.output.rstrip() + "\n"


def render() -> str:
    """The whole of ``docs/commands.md``."""
    parts = [_HEADER, "## `pomona`\n", "```text\n" + help_text() + "```\n"]
    for name in pomona.list_commands(click.Context(pomona)):
        parts += [f"## `pomona {name}`\n", "```text\n" + help_text(name) + "```\n"]
    return "\n".join(parts)


def main() -> int:
    DOC.write_text(render(), encoding="utf-8")
    print(f"wrote {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
