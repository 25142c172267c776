"""Training under torchrun (DistributedDataParallel, gloo on the CPU): the ranks' shares,
the loss weights, the reduced metrics, and 2-process runs against a single process.

A 2-process run and a single process with the same global batch and seed reach the same
weights within :data:`WEIGHTS_ATOL`: the gradient is the same mean, only summed in
another order (float32).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pomona.runtime.errors import PomonaError
from pomona.train import distributed
from pomona.train.batches import ShuffledBatches
from pomona.train.checkpoint import load_checkpoint
from pomona.train.config import TrainConfig
from pomona.train.distributed import World, no_buffer_broadcasts
from pomona.train.fit import _loss
from pomona.train.loop import train
from pomona.train.metrics import MetricSums, merged
from tests.conftest import SUBPROCESS_TIMEOUT
from tests.train.test_loop import states_equal, write_synthetic

#: Weights of a 2-process run against a single process (same global batch and seed).
WEIGHTS_ATOL = 1e-5
#: Losses and metrics reduced over the ranks (float64 sums) against a single process.
LOSS_RTOL = 1e-5
#: Set to 1 to run the 1M-row comparison (minutes).
MILLION_VARIABLE = "POMONA_DDP_MILLION"

psutil = pytest.importorskip("psutil")


# ---------------------------------------------------------------- shares and weights


@given(rows=st.integers(0, 200), size=st.integers(1, 9))
def test_the_ranks_parts_are_the_rows_in_order(rows: int, size: int) -> None:
    values = np.arange(rows)
    parts = [World(rank=r, size=size).share(values) for r in range(size)]
    assert np.array_equal(np.concatenate(parts), values)
    lengths = [len(p) for p in parts]
    assert max(lengths) - min(lengths) <= 1
    assert lengths == [len(p) for p in torch.tensor_split(torch.arange(rows), size)]


def test_every_rank_takes_its_part_of_every_global_batch() -> None:
    def batches(world: World | None) -> list[torch.Tensor]:
        return list(ShuffledBatches(23, 5, torch.Generator().manual_seed(3), world))

    whole = batches(None)
    parts = [batches(World(rank=r, size=3)) for r in range(3)]
    assert all(len(p) == len(whole) for p in parts)  # the same number of steps on every rank
    for step, batch in enumerate(whole):
        assert torch.equal(torch.cat([p[step] for p in parts]), batch)
    assert [len(p[-1]) for p in parts] == [1, 1, 1]  # the tail of 3 rows, one each
    # A tail with fewer rows than ranks leaves a rank an empty part; it still steps.
    tails = [list(ShuffledBatches(21, 5, torch.Generator(), World(r, 2)))[-1] for r in (0, 1)]
    assert [len(t) for t in tails] == [1, 0]


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 40), size=st.integers(1, 5), seed=st.integers(0, 1000))
def test_the_ranks_weighted_gradients_average_to_the_global_mean(
    rows: int, size: int, seed: int
) -> None:
    """What DDP does with the ranks' losses (average their gradients) gives the gradient of
    the global batch's mean squared error, also for uneven and empty parts."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 3, generator=generator)
    y = torch.randn(rows, 2, generator=generator)
    layer = torch.nn.Linear(3, 2)

    def gradient(loss: torch.Tensor) -> torch.Tensor:
        layer.zero_grad()
        loss.backward()
        assert layer.weight.grad is not None
        return layer.weight.grad.clone()

    reference = gradient(_loss(layer(x) - y, None, 1))
    per_rank = []
    for rank in range(size):
        world = World(rank=rank, size=size)
        per_rank.append(gradient(_loss(layer(world.share(x)) - world.share(y), rows, size)))
    assert torch.allclose(torch.stack(per_rank).mean(0), reference, atol=1e-6)


@given(
    cut=st.lists(st.integers(0, 30), min_size=1, max_size=4),
    seed=st.integers(0, 100),
)
def test_merged_metric_sums_equal_the_sums_of_all_rows(cut: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = sum(cut)
    true = torch.from_numpy(rng.normal(5, 3, (rows, 2)))
    pred = true + torch.from_numpy(rng.normal(0, 1, (rows, 2)))
    whole = MetricSums(2)
    whole.add(pred, true)
    parts = []
    for start, n in zip(np.cumsum([0, *cut[:-1]]), cut, strict=True):
        part = MetricSums(2)
        part.add(pred[start : start + n], true[start : start + n])
        parts.append(part)
    total = merged(parts)
    assert total.rows == whole.rows
    for name in ("squared", "absolute", "mean", "ss_tot"):
        assert np.allclose(getattr(total, name), getattr(whole, name), rtol=1e-12, atol=1e-9)


def test_buffer_broadcasts_are_turned_off_with_a_keyword_this_torch_takes() -> None:
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    class Before213:  # DistributedDataParallel's keywords before torch 2.13
        def __init__(self, module: Any, device_ids: Any = None, broadcast_buffers: bool = True):
            pass

    assert no_buffer_broadcasts(Before213) == {"broadcast_buffers": False}
    (keyword,) = no_buffer_broadcasts(DistributedDataParallel)
    assert keyword in inspect.signature(DistributedDataParallel.__init__).parameters


def test_torchrun_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launched() == World()
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(PomonaError, match="MASTER_ADDR and MASTER_PORT not set"):
        distributed.launched()  # not started by torchrun: said, not a hang or a traceback
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert distributed.launched() == World(rank=3, size=4, local_rank=1, local_size=2)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(PomonaError, match="do not fit"):
        distributed.launched()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setattr(distributed, "available_cpus", lambda: 7)
    assert distributed.default_threads() == 3  # 7 CPUs shared by 2 ranks on this machine
    monkeypatch.setattr(distributed, "available_cpus", lambda: 1)
    assert distributed.default_threads() == 1
    assert World(0, 2).describe(32) == "2 ranks x 16 rows = global batch 32"
    assert World(0, 2).describe(33) == "2 ranks x 16-17 rows = global batch 33"


# ---------------------------------------------------------------- torchrun, 2 processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun_command(*args: str | os.PathLike[str], processes: int = 2) -> list[str]:
    """``torchrun --nproc-per-node 2 ... -m pomona.runtime.cli ARGS`` on a free local port."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(processes),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "-m",
        "pomona.runtime.cli",
        *map(str, args),
    ]


def torchrun(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        torchrun_command(*args),
        capture_output=True,
        text=True,
        check=False,
        timeout=SUBPROCESS_TIMEOUT,
    )


def options(config: TrainConfig) -> list[str]:
    """``pomona train`` options for ``config`` (the settings these tests change)."""
    found = [
        *("--epochs", str(config.epochs), "--batch-size", str(config.batch_size)),
        *("--lr", repr(config.lr), "--val-fraction", repr(config.val_fraction)),
        *("--schedule", config.schedule, "--seed", str(config.seed), "--device", "cpu"),
        *("--threads", "1", "--out", config.out),
    ]
    if config.data is not None:
        found += ["--data", config.data]
    if config.hidden:
        found += ["--hidden", ",".join(map(str, config.hidden))]
    if config.stream:
        found += ["--stream", "--shuffle-buffer", str(config.shuffle_buffer)]
    return found


def assert_same_run(out: Path, reference: Any) -> float:
    """The checkpoint in ``out`` (2 ranks) against ``reference``, a single-process TrainResult;
    returns the largest difference of a weight."""
    state = load_checkpoint(out / "checkpoint.pt")
    ours, theirs = state["model_state"], reference.model.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.allclose(ours[key], value, rtol=0, atol=WEIGHTS_ATOL), key
    history = state["history"]
    assert len(history) == len(reference.history)
    for mine, single in zip(history, reference.history, strict=True):
        assert mine["train_loss"] == pytest.approx(single["train_loss"], rel=LOSS_RTOL)
        if single["val_loss"] is None:
            assert mine["val_loss"] is None
        else:  # reduced over both ranks' shares of the validation rows
            assert mine["val_loss"] == pytest.approx(single["val_loss"], rel=LOSS_RTOL)
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("train", "validation"):
        if reference.metrics[split] is None:
            assert metrics[split] is None
            continue
        assert metrics[split]["rows"] == reference.metrics[split]["rows"]
        for key in ("mse", "mae", "r2"):
            assert metrics[split][key] == pytest.approx(reference.metrics[split][key], rel=1e-4)
    assert metrics["best_epoch"] == reference.metrics["best_epoch"]
    return max(float((ours[k] - v).abs().max()) for k, v in theirs.items())


def test_two_ranks_on_the_crop_data_equal_one_process(tmp_path: Path) -> None:
    config = TrainConfig(epochs=40, batch_size=4, device="cpu", out=str(tmp_path / "ddp"))
    result = torchrun("train", *options(config))
    assert result.returncode == 0, result.stderr
    summaries = [line for line in result.stderr.splitlines() if line.startswith("trained ")]
    assert len(summaries) == 1, result.stderr  # rank 0 alone speaks
    assert "(2 ranks x 2 rows = global batch 4)" in summaries[0]
    assert "Error" not in result.stderr
    single = train(dataclasses.replace(config, out=str(tmp_path / "single")))
    assert_same_run(tmp_path / "ddp", single)


@pytest.mark.parametrize("first", ["two ranks", "one process"])
def test_a_run_resumed_with_another_number_of_ranks_equals_one_process(
    tmp_path: Path, first: str
) -> None:
    """The global batches do not depend on the number of ranks, and the checkpoint records
    none: 20 epochs on 2 ranks then 20 more on one process (or the other way round) end
    where 40 epochs on one process do."""
    half = TrainConfig(
        epochs=20, batch_size=4, schedule="constant", device="cpu", out=str(tmp_path / "run")
    )
    whole = dataclasses.replace(half, epochs=40)
    if first == "two ranks":
        assert (started := torchrun("train", *options(half))).returncode == 0, started.stderr
        assert train(whole, resume=True).resumed_from == 20
    else:
        train(half)
        resumed = torchrun("train", *options(whole), "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert "(resumed at epoch 20)" in resumed.stderr
        assert "(2 ranks x 2 rows = global batch 4)" in resumed.stderr
    single = train(dataclasses.replace(whole, out=str(tmp_path / "single")))
    assert_same_run(tmp_path / "run", single)


@pytest.mark.parametrize("stream", [False, True], ids=["in-memory", "streamed"])
def test_two_ranks_on_synthetic_rows_equal_one_process(tmp_path: Path, stream: bool) -> None:
    """20k rows, a global batch of 999 (parts of 500 and 499, a short tail), an MLP."""
    data = write_synthetic(tmp_path / "rows.csv", 20_000, seed=5)
    config = TrainConfig(
        data=str(data),
        epochs=3,
        batch_size=999,
        hidden=(8,),
        lr=0.03,
        device="cpu",
        stream=stream,
        shuffle_buffer=4096,
        out=str(tmp_path / "ddp"),
    )
    result = torchrun("train", *options(config))
    assert result.returncode == 0, result.stderr
    assert "(2 ranks x 499-500 rows = global batch 999)" in result.stderr
    single = train(dataclasses.replace(config, out=str(tmp_path / "single")))
    assert_same_run(tmp_path / "ddp", single)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get(MILLION_VARIABLE) != "1", reason=f"opt-in: {MILLION_VARIABLE}=1 runs it"
)
def test_a_million_rows_on_two_ranks_equal_one_process(tmp_path: Path) -> None:
    """The 1M-row case of the test above (docs/scale.md has its numbers): a linear model
    and an MLP, 3 epochs, a global batch of 1000."""
    data = write_synthetic(tmp_path / "rows.csv", 1_000_000, seed=7)
    for hidden in ((), (16,)):
        name = "mlp" if hidden else "linear"
        config = TrainConfig(
            data=str(data),
            epochs=3,
            batch_size=1000,
            hidden=hidden,
            lr=0.03 if hidden else 0.01,
            device="cpu",
            out=str(tmp_path / name / "ddp"),
        )
        result = torchrun("train", *options(config))
        assert result.returncode == 0, result.stderr
        single = train(dataclasses.replace(config, out=str(tmp_path / name / "single")))
        worst = assert_same_run(tmp_path / name / "ddp", single)
        print(f"{name}: largest weight difference {worst:.3g}")


def _checkpoint_epoch(path: Path) -> int:
    try:
        return int(load_checkpoint(path)["epoch"])
    except Exception:  # not written yet
        return 0


def test_killing_one_rank_fails_the_run_and_resume_ends_at_the_same_weights(
    tmp_path: Path,
) -> None:
    data = write_synthetic(tmp_path / "rows.csv", 2000)
    config = TrainConfig(
        data=str(data),
        batch_size=16,
        hidden=(16,),
        lr=0.03,
        schedule="constant",
        device="cpu",
        out=str(tmp_path / "killed"),
    )
    out = tmp_path / "killed"
    args = [*options(config), "--checkpoint-every", "1", "--epochs", "100000"]
    errors = tmp_path / "killed.err"
    with errors.open("w") as stderr:
        launcher = subprocess.Popen(
            torchrun_command("train", *args), stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        while _checkpoint_epoch(out / "checkpoint.pt") < 1:
            if launcher.poll() is not None:
                pytest.fail(f"training ended early: {errors.read_text()}")
            time.sleep(0.05)
        ranks = [
            child
            for child in psutil.Process(launcher.pid).children(recursive=True)
            if child.environ().get("RANK") == "1"
        ]
        assert ranks, "no process of rank 1"
        ranks[0].send_signal(signal.SIGKILL)
        status = launcher.wait(timeout=SUBPROCESS_TIMEOUT)
    finally:
        launcher.kill()
        launcher.wait()
    assert status != 0, errors.read_text()
    killed_at = _checkpoint_epoch(out / "checkpoint.pt")
    assert killed_at >= 1
    epochs = killed_at + 2

    resumed = torchrun("train", *options(config), "--epochs", str(epochs), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"(resumed at epoch {killed_at})" in resumed.stderr
    straight_out = tmp_path / "straight"
    straight = torchrun("train", *options(config), "--epochs", str(epochs), "--out", straight_out)
    assert straight.returncode == 0, straight.stderr
    state = load_checkpoint(out / "checkpoint.pt")
    reference = load_checkpoint(straight_out / "checkpoint.pt")
    assert state["epoch"] == reference["epoch"] == epochs
    assert states_equal(state["model_state"], reference["model_state"])
    assert state["history"] == reference["history"]
