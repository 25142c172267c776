"""Training on shards and streamed data: the same results as one file, exact resume after
SIGKILL, every bad-data message, the switch to streaming, checkpoint cadence, and
``--resume`` refusing each changed setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from pomona.runtime.errors import PomonaError
from pomona.train import fit as fit_module
from pomona.train.checkpoint import load_checkpoint
from pomona.train.cli import train as train_command
from pomona.train.config import RESUME_KEYS, TrainConfig
from pomona.train.loop import train
from tests.conftest import needs, run_pomona
from tests.train.test_cli import kill_after_a_checkpoint
from tests.train.test_dataset import BAD_DATA
from tests.train.test_loop import states_equal, write_synthetic


def _split(path: Path, folder: Path, parts: int) -> Path:
    """Write ``path``'s rows as ``parts`` CSV shards in ``folder`` (sorted names keep order)."""
    header, *rows = path.read_text().splitlines()
    folder.mkdir()
    for i, chunk in enumerate(np.array_split(np.array(rows), parts)):
        (folder / f"part-{i:03d}.csv").write_text("\n".join([header, *chunk]) + "\n")
    return folder


def _config(tmp_path: Path, name: str, data: Path | str, **changes: Any) -> TrainConfig:
    settings: dict[str, Any] = {
        "data": str(data), "epochs": 4, "batch_size": 16, "device": "cpu",
        "schedule": "constant", "out": str(tmp_path / name), "threads": 1, **changes,
    }  # fmt: skip
    return TrainConfig(**settings)


def test_shards_train_exactly_like_one_file(tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "d.csv", 300)
    folder = _split(data, tmp_path / "shards", 3)
    whole = train(_config(tmp_path, "whole", data, hidden=(4,)))
    for source in (folder, str(folder / "part-*.csv")):
        sharded = train(_config(tmp_path, "sharded", source, hidden=(4,)))
        assert states_equal(whole.model.state_dict(), sharded.model.state_dict())
        assert whole.history == sharded.history and whole.metrics == sharded.metrics


def test_a_changed_shard_is_another_data_set_for_resume(tmp_path: Path) -> None:
    folder = _split(write_synthetic(tmp_path / "d.csv", 90), tmp_path / "shards", 3)
    config = _config(tmp_path, "run", folder, epochs=2)
    train(config)
    last = folder / "part-002.csv"
    last.write_text(last.read_text().replace("\n", "\n", 1) + "1,2,3,4,5\n")
    with pytest.raises(PomonaError, match="the data differ"):
        train(dataclasses.replace(config, epochs=3), resume=True)


def test_streaming_reaches_the_in_memory_result(tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "d.csv", 2000)
    folder = _split(data, tmp_path / "shards", 4)
    common = {"epochs": 6, "batch_size": 32, "schedule": "cosine", "val_fraction": 0.2}
    memory = train(_config(tmp_path, "memory", data, **common))
    streamed = train(_config(tmp_path, "stream", folder, stream=True, shuffle_buffer=256, **common))
    rows = streamed.metrics["train"]["rows"] + streamed.metrics["validation"]["rows"]
    assert rows == 2000 and 300 < streamed.metrics["validation"]["rows"] < 500
    for result in (memory, streamed):
        assert result.metrics["train"]["mse"] <= 1.02 * result.metrics["least_squares_mse"]
    assert streamed.metrics["least_squares_mse"] == pytest.approx(
        memory.metrics["least_squares_mse"], rel=0.1
    )


def test_streaming_is_reproducible_and_resumes_exactly(tmp_path: Path) -> None:
    folder = _split(write_synthetic(tmp_path / "d.csv", 400), tmp_path / "shards", 3)
    common = {"stream": True, "shuffle_buffer": 50, "hidden": (6,), "checkpoint_epochs": 1}
    straight = train(_config(tmp_path, "straight", folder, epochs=5, **common))
    again = train(_config(tmp_path, "again", folder, epochs=5, **common))
    assert states_equal(straight.model.state_dict(), again.model.state_dict())
    part = _config(tmp_path, "part", folder, epochs=2, **common)
    train(part)
    resumed = train(dataclasses.replace(part, epochs=5), resume=True)
    assert resumed.resumed_from == 2
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())
    assert straight.history == resumed.history and straight.metrics == resumed.metrics


def test_streaming_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    folder = _split(write_synthetic(tmp_path / "d.csv", 600), tmp_path / "shards", 3)
    options = ["--data", folder, "--stream", "--shuffle-buffer", "64", "--batch-size", "8",
               "--hidden", "8", "--device", "cpu", "--schedule", "constant", "--threads", "1",
               "--checkpoint-every", "1"]  # fmt: skip
    out = tmp_path / "killed"
    killed_at = kill_after_a_checkpoint([*map(str, options), "--epochs", "100000"], out)
    epochs = killed_at + 2
    resumed = run_pomona("train", *options, "--epochs", epochs, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"(resumed at epoch {killed_at})" in resumed.stderr
    straight = run_pomona("train", *options, "--epochs", epochs, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    state, reference = (load_checkpoint(p / "checkpoint.pt") for p in (out, tmp_path / "straight"))
    assert state["epoch"] == reference["epoch"] == epochs
    assert states_equal(state["model_state"], reference["model_state"])
    assert state["history"] == reference["history"] and state["metrics"] == reference["metrics"]


STREAMED_BAD_DATA = {
    case: spec
    for case, spec in BAD_DATA.items()
    if case not in ("too few rows", "one row, no validation")
}


@pytest.mark.parametrize("case", list(STREAMED_BAD_DATA))
def test_bad_data_gives_the_same_message_when_streamed(case: str, tmp_path: Path) -> None:
    name, contents, options, expected = STREAMED_BAD_DATA[case]
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "a-good.csv").write_text(BAD_DATA["header only"][1] + "73,67,43,56,70\n" * 5)
    data = folder / name
    if contents is not None:
        data.write_text(contents)
    for source in [str(data)] if contents is None else [str(data), str(folder)]:
        result = run_pomona(
            "train", "--data", source, "--stream", "--out", tmp_path / "o", *options
        )
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
        for part in expected:
            assert part.replace(name, str(data)) in lines[0] or part in lines[0]
        assert not (tmp_path / "o").exists()


def test_too_few_rows_when_streamed(tmp_path: Path) -> None:
    data = tmp_path / "two.csv"
    data.write_text(BAD_DATA["too few rows"][1])
    result = run_pomona("train", "--data", data, "--stream", "--out", tmp_path / "o")
    assert result.returncode == 1
    assert "two.csv: 2 data rows, but training needs at least 3" in result.stderr


def test_data_that_would_not_fit_switch_to_streaming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_synthetic(tmp_path / "d.csv", 200)
    monkeypatch.setattr("pomona.train.stream.available_memory", lambda: 10_000)
    runner = CliRunner()
    options = ["--data", str(data), "--epochs", "2", "--threads", "1"]
    result = runner.invoke(train_command, [*options, "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "would need" in result.output and "streaming from disk (--stream)" in result.output
    assert load_checkpoint(tmp_path / "o" / "checkpoint.pt")["config"]["stream"] is True
    monkeypatch.setattr("pomona.train.stream.available_memory", lambda: 1 << 40)
    result = runner.invoke(train_command, [*options, "--out", str(tmp_path / "p")])
    assert "streaming" not in result.output
    assert load_checkpoint(tmp_path / "p" / "checkpoint.pt")["config"]["stream"] is False


@pytest.mark.parametrize(
    ("every", "saves"),
    [({}, [20]), ({"checkpoint_epochs": 7}, [7, 14, 20]), ({"checkpoint_seconds": 0.0}, None)],
)
def test_checkpoints_follow_the_interval_and_end_the_run(
    every: dict[str, Any], saves: list[int] | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[int] = []
    original = fit_module.save_checkpoint
    monkeypatch.setattr(
        fit_module, "save_checkpoint", lambda p, s: (written.append(s["epoch"]), original(p, s))
    )
    config = _config(tmp_path, "run", write_synthetic(tmp_path / "d.csv", 20), epochs=20, **every)
    train(config)
    written.append(load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"])
    assert written == (saves or list(range(1, 21)))


def _changed(key: str, value: Any) -> Any:
    changes: dict[str, Any] = {
        "features": ("temp", "rainfall"), "targets": ("apples",), "hidden": (3,),
        "lr": 0.02, "momentum": 0.5, "weight_decay": 0.01, "batch_size": 7,
        "schedule": "linear", "precondition": False, "val_fraction": 0.3,
        "early_stopping": 5, "seed": 1, "stream": True, "shuffle_buffer": 10, "epochs": 5,
    }  # fmt: skip
    assert changes[key] != value
    return changes[key]


@pytest.mark.parametrize("key", [*RESUME_KEYS, "epochs"])
def test_resume_refuses_each_changed_setting(key: str, tmp_path: Path) -> None:
    base = _config(tmp_path, "run", write_synthetic(tmp_path / "d.csv", 40), epochs=2)
    if key == "epochs":
        base = dataclasses.replace(base, schedule="cosine")
    train(base)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    other = dataclasses.replace(base, **{key: _changed(key, getattr(base, key))})
    with pytest.raises(PomonaError, match=rf"--{key.replace('_', '-')} .* there, .* now"):
        train(other, resume=True)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_parquet_shards_stream(tmp_path: Path) -> None:
    pa, pq = needs("pyarrow"), needs("pyarrow.parquet")
    rng = np.random.default_rng(0)
    folder = tmp_path / "pq"
    folder.mkdir()
    for i in range(3):
        x = rng.normal(size=(100, 3))
        y = x @ np.ones((3, 2)) + rng.normal(0, 0.1, (100, 2))
        names = ["temp", "rainfall", "humidity", "apples", "oranges"]
        pq.write_table(pa.table(dict(zip(names, np.hstack([x, y]).T, strict=True))),
                       folder / f"part-{i}.parquet")  # fmt: skip
    result = train(_config(tmp_path, "run", str(folder / "*.parquet"), stream=True, epochs=3))
    assert result.metrics["train"]["rows"] + result.metrics["validation"]["rows"] == 300
