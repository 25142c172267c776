"""Batch prediction on Ray Data: one local Ray cluster (2 CPUs) for the whole module."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pomona.runtime.data import predict_file
from pomona.runtime.errors import ArtifactError, DataError, PomonaError
from pomona.runtime.predictor import Predictor
from tests.conftest import needs
from tests.onnx_models import make_linear_onnx

ray = needs("ray")
pa = needs("pyarrow")
pq = needs("pyarrow.parquet")
pacsv = needs("pyarrow.csv")

from pomona.runtime.predict_ray import predict_with_ray  # noqa: E402
from pomona.runtime.ray import BatchPredictor  # noqa: E402

# Ray warns about its own deprecated settings from inside its code.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")

FEATURES = ["temp", "rainfall", "humidity"]
SHARDS, ROWS = 4, 500


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def model(tmp_path: Path) -> Path:
    (tmp_path / "m").mkdir()
    return make_linear_onnx(tmp_path / "m" / "model.onnx")


def _table(i: int, rows: int = ROWS) -> object:
    x = np.random.default_rng(i).uniform(-100, 100, size=(rows, 3)).astype(np.float32)
    columns = {"id": [f"s{i}-{j:04d}" for j in range(rows)], "note": ["x"] * rows}
    columns.update({name: x[:, k] for k, name in enumerate(FEATURES)})
    return pa.table(columns)


def _shards(folder: Path, fmt: str) -> Path:
    folder.mkdir()
    for i in range(SHARDS):
        if fmt == "parquet":
            pq.write_table(_table(i), folder / f"part-{i}.parquet")
        else:
            pacsv.write_csv(_table(i), folder / f"part-{i}.csv")
    return folder


def _single_process(model: Path, tmp_path: Path) -> object:
    """``pomona predict`` over all the rows in one file, one process."""
    whole = pa.concat_tables([_table(i) for i in range(SHARDS)])
    pq.write_table(whole, tmp_path / "whole.parquet")
    predict_file(
        Predictor(model),
        str(tmp_path / "whole.parquet"),
        str(tmp_path / "one.parquet"),
        keep=["id"],
    )
    return pq.read_table(tmp_path / "one.parquet")


def _read_output(folder: Path, fmt: str) -> object:
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"part-{i:05d}.{fmt}" for i in range(len(names))]
    if fmt == "parquet":
        return pa.concat_tables([pq.read_table(folder / n) for n in names])
    types = {"id": pa.string(), "apples": pa.float32(), "oranges": pa.float32()}
    options = pacsv.ConvertOptions(column_types=types)
    return pa.concat_tables([pacsv.read_csv(folder / n, convert_options=options) for n in names])


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_shards_equal_single_process_row_for_row(
    cluster: None, model: Path, tmp_path: Path, fmt: str
) -> None:
    shards = _shards(tmp_path / "in", fmt)
    predict_with_ray(
        str(model),
        str(shards),
        str(tmp_path / "out"),
        output_format=fmt,
        workers=2,
        batch_size=128,
        keep=["id"],
    )
    got = _read_output(tmp_path / "out", fmt)
    expected = _single_process(model, tmp_path)
    assert got.column_names == ["id", "apples", "oranges"]
    assert got.column("id").to_pylist() == expected.column("id").to_pylist()
    for target in ("apples", "oranges"):
        np.testing.assert_array_equal(
            got.column(target).to_numpy(), expected.column(target).to_numpy()
        )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_glob_of_csv_shards_and_empty_output_folder(
    cluster: None, model: Path, tmp_path: Path
) -> None:
    shards = _shards(tmp_path / "in", "csv")
    (tmp_path / "out").mkdir()
    names = predict_with_ray(str(model), str(shards / "part-[01].csv"), str(tmp_path / "out"))
    assert names and all(n.endswith(".parquet") for n in names)
    assert _read_output(tmp_path / "out", "parquet").num_rows == 2 * ROWS


def test_a_bad_cell_in_a_worker_is_one_error_and_no_output(
    cluster: None, model: Path, tmp_path: Path
) -> None:
    shards = _shards(tmp_path / "in", "parquet")
    bad = _table(9).to_pydict()
    bad["rainfall"][300] = float("nan")
    pq.write_table(pa.table(bad), shards / "part-9.parquet")
    with pytest.raises(
        PomonaError, match=r"part-9\.parquet, row 301, column .rainfall.: .nan. is not a finite"
    ):
        predict_with_ray(str(model), str(shards), str(tmp_path / "out"), workers=2)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "m"]  # no staging folder


# -- found on the driver, before Ray is used ----------------------------------------------


def test_missing_column_in_any_shard_is_refused_first(model: Path, tmp_path: Path) -> None:
    shards = _shards(tmp_path / "in", "parquet")
    pq.write_table(_table(7).drop(["humidity"]), shards / "part-7.parquet")
    with pytest.raises(DataError, match=r"part-7\.parquet: no column 'humidity'"):
        predict_with_ray(str(model), str(shards), str(tmp_path / "out"))
    with pytest.raises(DataError, match="no column 'nope'"):
        predict_with_ray(
            str(model), str(shards / "part-0.parquet"), str(tmp_path / "o"), keep=["nope"]
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "m"]


def test_refusals(model: Path, tmp_path: Path) -> None:
    shards = _shards(tmp_path / "in", "parquet")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DataError, match="exists and is not empty"):
        predict_with_ray(str(model), str(shards), str(tmp_path / "full"))
    with pytest.raises(DataError, match="no Parquet or CSV files"):
        predict_with_ray(str(model), str(tmp_path / "m" / "*.csv"), str(tmp_path / "o"))
    with pytest.raises(DataError, match="clash with the model's outputs"):
        predict_with_ray(str(model), str(shards), str(tmp_path / "o"), keep=["apples"])
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="not a valid ONNX model"):
        predict_with_ray(str(tmp_path / "bad.onnx"), str(shards), str(tmp_path / "o"))


def test_batch_predictor_takes_columns_by_name_and_keeps_columns(model: Path) -> None:
    table = _table(3, rows=10)
    batch = {name: table.column(name).to_numpy() for name in reversed(table.column_names)}
    out = BatchPredictor(model, keep=["id"], threads=1)(batch)
    assert list(out) == ["id", "apples", "oranges"]
    expected = Predictor(model).predict_columns(batch)
    np.testing.assert_array_equal(np.stack([out["apples"], out["oranges"]], axis=1), expected)
    assert list(out["id"]) == table.column("id").to_pylist()


def test_pickled_predictor_predicts_as_the_original(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Predictor(model)
    x = np.random.default_rng(1).uniform(-5, 5, size=(100, 3)).astype(np.float32)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    copy = pickle.loads(pickle.dumps(original))
    assert copy._backend is None  # loaded on first use, in the process that uses it
    np.testing.assert_array_equal(copy.predict(x), original.predict(x))
    assert copy.session.get_session_options().intra_op_num_threads == 1
    assert pickle.loads(pickle.dumps(copy)).target_names == original.target_names


def test_unpickled_predictor_refuses_a_model_changed_since(model: Path, tmp_path: Path) -> None:
    blob = pickle.dumps(Predictor(model))
    make_linear_onnx(model, feature_names=["a", "b", "c"])  # same shape, other names
    with pytest.raises(ArtifactError, match="changed since it was loaded"):
        pickle.loads(blob).predict(np.zeros((1, 3), dtype=np.float32))


def test_predict_dataset_on_a_ray_dataset(cluster: None, model: Path) -> None:
    from pomona.runtime.ray import predict_dataset

    table = pa.concat_tables([_table(i, rows=200) for i in range(3)])
    ds = ray.data.from_arrow(table).repartition(3)
    rows = predict_dataset(ds, model, workers=2, batch_size=64, keep=["id"]).take_all()
    assert sorted(rows[0]) == ["apples", "id", "oranges"]
    got = {r["id"]: (r["apples"], r["oranges"]) for r in rows}
    expected = Predictor(model).predict_columns(table)
    assert len(got) == table.num_rows
    for i, key in enumerate(table.column("id").to_pylist()):
        assert got[key] == tuple(expected[i])
