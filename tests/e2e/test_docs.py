"""The documentation stays true: the command reference matches ``--help``, links resolve."""

from __future__ import annotations

import re

from tests.conftest import REPO
from tools import commands_doc

_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_command_reference_matches_help() -> None:
    written = commands_doc.DOC.read_text(encoding="utf-8")
    assert written == commands_doc.render(), (
        "docs/commands.md differs from the --help texts; run `make docs` and commit it"
    )


def test_every_command_is_in_the_reference() -> None:
    text = commands_doc.DOC.read_text(encoding="utf-8")
    for name in ("train", "export", "predict", "info", "serve"):
        assert f"## `pomona {name}`" in text
        assert f"Usage: pomona {name} [OPTIONS]" in text


def test_relative_links_resolve() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in _LINK.findall(page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken


def test_readme_is_a_short_front_door() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "make train export" in readme
    assert "make test" in readme
    assert len(readme.splitlines()) <= 250
