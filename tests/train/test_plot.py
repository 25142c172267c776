"""The loss-curve picture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pomona.train.plot import plot_history
from tests.conftest import needs

needs("matplotlib")
Image = needs("PIL.Image")  # matplotlib brings Pillow


def _history(epochs: int, validation: bool, scale: float = 1.0) -> list[dict[str, Any]]:
    return [
        {
            "epoch": e,
            "train_loss": scale * 10 / e**1.5,
            "val_loss": scale * 12 / e**1.2 if validation else None,
        }
        for e in range(1, epochs + 1)
    ]


@pytest.mark.parametrize(
    "history",
    [
        _history(1, False),
        _history(3, False, scale=0.1),
        _history(40, True),
        _history(200, True, scale=1e-4),
    ],
    ids=["one-epoch", "within-a-decade", "with-validation", "many-decades"],
)
def test_the_curve_is_a_png_of_fixed_size(tmp_path: Path, history: list[dict[str, Any]]) -> None:
    path = tmp_path / "loss_curve.png"
    plot_history(history, path)
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (640, 400)
    assert [p.name for p in tmp_path.iterdir()] == ["loss_curve.png"]  # no temporary left


def test_the_loss_axis_needs_no_mathtext(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Labels are plain text: matplotlib's mathtext parser is the slow part of a drawing."""
    from matplotlib import mathtext

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("mathtext was parsed")

    monkeypatch.setattr(mathtext.MathTextParser, "parse", refuse)
    for history in (_history(3, False, scale=0.1), _history(200, True, scale=1e-4)):
        plot_history(history, tmp_path / "loss_curve.png")
