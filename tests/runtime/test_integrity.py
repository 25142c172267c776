"""Every byte that decides a prediction is covered by the manifest's hashes; the model's
real output is checked once at load; tables are matched by column name."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import convert_model_to_external_data

from pomona.runtime.artifacts import MANIFEST_FILE, MODEL_FILES, ONNX_FILE, check_manifest
from pomona.runtime.errors import ArtifactError, InputError
from pomona.runtime.model_info import describe
from pomona.runtime.onnx_proto import external_data_locations, inside_folder
from pomona.runtime.predict_cli import info, predict
from pomona.runtime.predictor import Predictor
from tests.conftest import needs
from tests.hostile_models import (
    make_external_data_onnx,
    make_wide_output_onnx,
    write_manifest,
)
from tests.onnx_models import CROP_FEATURES, make_linear_onnx, reference_predictions

ROWS = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)


def _csv(folder: Path) -> Path:
    path = folder / "rows.csv"
    path.write_text("temp,rainfall,humidity\n1,2,3\n4,5,6\n")
    return path


def _predict_refused(model: Path, message: str, *extra: str) -> None:
    """``pomona predict`` exits 1 with one Error line and writes nothing."""
    rows = _csv(model.parent)
    before = sorted(p.name for p in model.parent.iterdir())
    out = model.parent / "out.csv"
    result = CliRunner().invoke(predict, [str(model), str(rows), "-o", str(out), *extra])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    assert sorted(p.name for p in model.parent.iterdir()) == before  # no output, no temp file


# -- a model under any name is checked by content -------------------------------------------


def test_a_renamed_copy_of_the_listed_model_is_vouched_for(tmp_path: Path) -> None:
    model = make_linear_onnx(tmp_path / ONNX_FILE)
    write_manifest(tmp_path, {ONNX_FILE: model})
    copy = tmp_path / "copy.onnx"
    shutil.copy(model, copy)
    check = check_manifest(copy)
    assert check.status == "ok" and "as model.onnx" in check.detail
    assert Predictor(copy).manifest_checked is True


def test_an_unlisted_model_beside_a_manifest_is_refused(tmp_path: Path) -> None:
    model = make_linear_onnx(tmp_path / ONNX_FILE)
    write_manifest(tmp_path, {ONNX_FILE: model})
    evil = make_linear_onnx(tmp_path / "evil.onnx", bias=np.array([100.0, 100.0], np.float32))
    check = check_manifest(evil)
    assert check.status == "mismatch" and check.refused
    assert "matches none of model.onnx" in check.detail
    with pytest.raises(ArtifactError, match=r"not a model manifest\.json lists"):
        Predictor(evil)
    assert describe(evil)["manifest"]["status"] == "mismatch"
    _predict_refused(evil, "not a model manifest.json lists")
    assert Predictor(evil, check_manifest=False).manifest_checked is False  # the opt-out


def test_model_entries_are_a_list() -> None:
    assert ONNX_FILE in MODEL_FILES


# -- external data -------------------------------------------------------------------------


def test_external_data_locations_are_found(tmp_path: Path) -> None:
    plain = make_linear_onnx(tmp_path / "plain.onnx")
    assert external_data_locations(plain.read_bytes()) == []
    model = make_external_data_onnx(tmp_path / ONNX_FILE)
    assert external_data_locations(model.read_bytes()) == ["weights.bin"]


def _constant_model(path: Path, location: str) -> Path:
    """A model whose weights are a Constant node's tensor inside an If subgraph."""
    weights = numpy_helper.from_array(np.eye(3, 2, dtype=np.float32), "W")
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["W"], value=weights)],
        "branch",
        [],
        [helper.make_tensor_value_info("W", TensorProto.FLOAT, [3, 2])],
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    graph = helper.make_graph(
        [
            helper.make_node("If", ["cond"], ["Wout"], then_branch=branch, else_branch=branch),
            helper.make_node("MatMul", ["features", "Wout"], ["predictions"]),
        ],
        "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("predictions", TensorProto.FLOAT, ["batch", 2])],
        initializer=[cond],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    convert_model_to_external_data(
        model, location=location, size_threshold=0, convert_attribute=True
    )
    onnx.save_model(model, str(path))
    return path


def test_external_data_in_subgraph_attributes_is_found(tmp_path: Path) -> None:
    model = _constant_model(tmp_path / ONNX_FILE, "consts.bin")
    assert external_data_locations(model.read_bytes()) == ["consts.bin"]


@pytest.mark.parametrize(
    ("location", "inside"),
    [("w.bin", True), ("sub/w.bin", True), ("../w.bin", False), ("/etc/w", False), ("", False)],
)
def test_inside_folder(location: str, inside: bool) -> None:
    assert inside_folder(location) is inside


def _tampered_weights(weights: Path) -> bytes:
    data = bytearray(weights.read_bytes())
    data[0] ^= 0x40  # one weight changed: the model file itself is untouched
    return bytes(data)


def test_external_data_not_in_the_manifest_is_refused(tmp_path: Path) -> None:
    model = make_external_data_onnx(tmp_path / ONNX_FILE)
    write_manifest(tmp_path, {ONNX_FILE: model})  # the model file only, not weights.bin
    check = check_manifest(model)
    assert check.status == "mismatch"
    assert "external data file weights.bin is not listed" in check.detail
    _predict_refused(model, "weights.bin is not listed")
    # --no-manifest-check still loads it, as onnxruntime does
    predictor = Predictor(model, check_manifest=False)
    np.testing.assert_array_equal(predictor.predict(ROWS), reference_predictions(ROWS))


def test_external_data_listed_is_hashed_and_tampering_is_refused(tmp_path: Path) -> None:
    model = make_external_data_onnx(tmp_path / ONNX_FILE)
    weights = tmp_path / "weights.bin"
    write_manifest(tmp_path, {ONNX_FILE: model, "weights.bin": weights})
    assert check_manifest(model).status == "ok"
    assert Predictor(model).manifest_checked is True
    weights.write_bytes(_tampered_weights(weights))
    check = check_manifest(model)
    assert check.status == "mismatch"
    assert "external data file weights.bin changed since manifest.json" in check.detail
    result = CliRunner().invoke(info, [str(model)])
    assert result.exit_code == 0 and "manifest   mismatch: external data file" in result.output
    _predict_refused(model, "weights.bin changed since manifest.json")


def test_external_data_runs_the_bytes_that_were_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """External data changed between its check and the session's build is not run: the
    session takes the bytes that were hashed (onnxruntime >= 1.23 takes them from memory)."""
    ort_backend = needs("pomona.runtime.backends.ort_backend")
    if not hasattr(needs("onnxruntime").SessionOptions, ort_backend._EXTERNAL_DATA_IN_MEMORY):
        pytest.skip("this onnxruntime reads external data only from files")
    model = make_external_data_onnx(tmp_path / ONNX_FILE)
    weights = tmp_path / "weights.bin"
    write_manifest(tmp_path, {ONNX_FILE: model, "weights.bin": weights})
    open_session = ort_backend.open_session

    def tamper_then_open(*args: object, **kwargs: object) -> object:
        weights.write_bytes(_tampered_weights(weights))  # after the check, before the load
        return open_session(*args, **kwargs)

    monkeypatch.setattr(ort_backend, "open_session", tamper_then_open)
    predictor = Predictor(model, backend="onnxruntime")
    assert predictor.manifest_checked
    np.testing.assert_array_equal(predictor.predict(ROWS), reference_predictions(ROWS))
    monkeypatch.undo()
    copy = pickle.loads(pickle.dumps(predictor))  # a copy re-reads them: they changed
    with pytest.raises(ArtifactError, match=r"external data file weights\.bin changed since it"):
        copy.predict(ROWS)


def test_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    model = make_external_data_onnx(folder / ONNX_FILE)
    proto = onnx.load(str(model), load_external_data=False)
    for tensor in proto.graph.initializer:  # onnx refuses to write such a model itself
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    model.write_bytes(proto.SerializeToString())
    write_manifest(folder, {ONNX_FILE: model})
    check = check_manifest(model)
    assert check.refused and "'../weights.bin' is not a file in the model's folder" in check.detail


def test_a_model_the_parser_cannot_read_beside_a_manifest_is_refused(tmp_path: Path) -> None:
    model = tmp_path / ONNX_FILE
    model.write_bytes(b"\x0a\xff\xff")  # a field longer than the file
    write_manifest(tmp_path, {ONNX_FILE: model})
    check = check_manifest(model)
    assert check.refused and "not a valid ONNX model" in check.detail
    assert "its external data cannot be listed" in check.detail


# -- the real output width -----------------------------------------------------------------


def test_a_wrong_output_width_is_refused_at_load(tmp_path: Path) -> None:
    model = make_wide_output_onnx(tmp_path / ONNX_FILE)
    message = "declares 2 target(s) (apples, oranges), but for one row the model returns"
    for check in (True, False):
        with pytest.raises(ArtifactError, match=r"returns float32 of shape \[1, 3\]") as err:
            Predictor(model, check_manifest=check)
        assert message in str(err.value)
    _predict_refused(model, message)
    for args in ([str(model)], [str(model), "--json"]):
        result = CliRunner().invoke(info, args)
        assert result.exit_code == 1 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_model_that_fails_on_one_row_is_refused_at_load(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["features", "shape"], ["predictions"])],
        "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("predictions", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(np.array([2, 3], np.int64), "shape")],
    )
    model = tmp_path / ONNX_FILE
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), model)
    with pytest.raises(ArtifactError, match="the model fails on one row of zeros: "):
        Predictor(model)


def test_the_declared_width_passes(tmp_path: Path) -> None:
    predictor = Predictor(make_linear_onnx(tmp_path / ONNX_FILE))
    assert predictor.predict(ROWS).shape == (2, 2)


# -- tables by column name -----------------------------------------------------------------


@pytest.fixture
def crop(tmp_path: Path) -> Predictor:
    return Predictor(make_linear_onnx(tmp_path / ONNX_FILE))


def test_a_dataframe_is_matched_by_name(crop: Predictor) -> None:
    pd = needs("pandas")
    frame = pd.DataFrame(ROWS, columns=CROP_FEATURES)
    shuffled = frame[["humidity", "temp", "rainfall"]].assign(extra=7.0)
    expected = reference_predictions(ROWS)
    np.testing.assert_array_equal(crop.predict(shuffled), expected)
    np.testing.assert_array_equal(crop.predict(frame), expected)
    with pytest.raises(InputError, match="missing column"):
        crop.predict(pd.DataFrame(ROWS))  # integer labels: not taken by position


def test_an_arrow_table_and_a_mapping_are_matched_by_name(crop: Predictor) -> None:
    pa = needs("pyarrow")
    columns = {"rainfall": ROWS[:, 1], "humidity": ROWS[:, 2], "temp": ROWS[:, 0]}
    expected = reference_predictions(ROWS)
    table = pa.table(columns)
    np.testing.assert_array_equal(crop.predict(table), expected)
    np.testing.assert_array_equal(crop.predict(table.to_batches()[0]), expected)
    np.testing.assert_array_equal(crop.predict(columns), expected)


def test_bare_arrays_stay_positional(crop: Predictor) -> None:
    expected = reference_predictions(ROWS)
    np.testing.assert_array_equal(crop.predict(ROWS), expected)
    np.testing.assert_array_equal(crop.predict(ROWS.tolist()), expected)
    np.testing.assert_array_equal(crop.predict(ROWS.astype(np.float64)), expected)


# -- an unreadable model -------------------------------------------------------------------


def test_a_socket_or_fifo_as_model_is_refused(tmp_path: Path) -> None:
    import os
    import socket

    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    with pytest.raises(ArtifactError, match="not a regular file"):
        Predictor(fifo)  # refused without opening it (which would block)
    path = tmp_path / "sock.onnx"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(ArtifactError, match="not a regular file"):
            Predictor(path)


def test_manifest_json_detail_names_the_file(tmp_path: Path) -> None:
    model = make_linear_onnx(tmp_path / ONNX_FILE)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"artifacts": {"other.bin": {}}}))
    assert check_manifest(model).status == "none"


# -- the bytes checked are the bytes run ------------------------------------------------------


@pytest.mark.parametrize("backend", ["onnxruntime", "numpy"])
def test_the_bytes_checked_against_the_manifest_are_the_bytes_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """A model swapped between the manifest check and the load is not what runs."""
    import pomona.runtime.predictor as predictor_module

    model = make_linear_onnx(tmp_path / ONNX_FILE)
    write_manifest(tmp_path, {ONNX_FILE: model})
    checked = model.read_bytes()
    real_check = predictor_module.compare_with_manifest

    def check_then_swap(*args: object, **kwargs: object) -> object:
        result = real_check(*args, **kwargs)  # type: ignore[arg-type]
        make_linear_onnx(tmp_path / ONNX_FILE, weights=np.ones((3, 2), np.float32) * 9)
        return result

    monkeypatch.setattr(predictor_module, "compare_with_manifest", check_then_swap)
    predictor = Predictor(model, backend=backend)
    assert model.read_bytes() != checked  # the file on disk did change
    assert predictor.manifest_checked is True
    assert predictor.sha256 == hashlib.sha256(checked).hexdigest()
    np.testing.assert_allclose(predictor.predict(ROWS), reference_predictions(ROWS), rtol=1e-6)


def test_an_unpickled_copy_refuses_a_model_changed_since_it_was_loaded(tmp_path: Path) -> None:
    model = make_linear_onnx(tmp_path / ONNX_FILE)
    copy = pickle.loads(pickle.dumps(Predictor(model)))
    np.testing.assert_allclose(copy.predict(ROWS), reference_predictions(ROWS), rtol=1e-6)
    changed = pickle.loads(pickle.dumps(Predictor(model)))
    make_linear_onnx(model, weights=np.ones((3, 2), np.float32) * 9)  # same names, new weights
    with pytest.raises(ArtifactError, match="changed since it was loaded"):
        changed.predict(ROWS)
