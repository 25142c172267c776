"""Predictor: loading, manifest check, input validation and parity with onnxruntime."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pomona.runtime.artifacts import FORMAT_KEY, INPUT_NAME, MANIFEST_FILE, ONNX_FILE, OUTPUT_NAME
from pomona.runtime.backends import ort_backend as session_module
from pomona.runtime.errors import ArtifactError, InputError
from pomona.runtime.predictor import Predictor
from tests.conftest import needs
from tests.onnx_models import (
    CROP_FEATURES,
    CROP_TARGETS,
    make_linear_onnx,
    reference_predictions,
)


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return make_linear_onnx(tmp_path / ONNX_FILE)


@pytest.fixture
def predictor(model_path: Path) -> Predictor:
    return Predictor(model_path)


def _write_manifest(model: Path, sha256: str) -> None:
    manifest = {"format": 1, "artifacts": {model.name: {"sha256": sha256, "size": 1}}}
    (model.parent / MANIFEST_FILE).write_text(json.dumps(manifest))


def _unnamed_model(path: Path) -> Path:
    """A Gemm model with fixed widths and no pomona metadata."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
        initializer=[
            numpy_helper.from_array(np.array([[1.0], [2.0]], np.float32), "W"),
            numpy_helper.from_array(np.array([0.5], np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save_model(model, str(path))
    return path


def test_names_and_shapes(predictor: Predictor, model_path: Path) -> None:
    assert predictor.path == model_path
    assert predictor.feature_names == CROP_FEATURES
    assert predictor.target_names == CROP_TARGETS
    assert (predictor.n_features, predictor.n_targets) == (3, 2)
    assert predictor.metadata[FORMAT_KEY] == "1"
    assert predictor.manifest_checked is False
    assert predictor.providers == ["CPUExecutionProvider"]


def test_names_fall_back_to_positions(tmp_path: Path) -> None:
    predictor = Predictor(_unnamed_model(tmp_path / "plain.onnx"))
    assert predictor.feature_names == ["f0", "f1"]
    assert predictor.target_names == ["y0"]
    np.testing.assert_array_equal(predictor.predict([1, 2]), [[5.5]])


@pytest.mark.parametrize(
    "rows",
    [
        np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32),
        np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float64),
        np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64),
        np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8),
        [[1, 2, 3], [4.0, 5.0, 6.0]],
        np.asfortranarray(np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)),
        np.array([[1, 9, 2, 9, 3], [4, 9, 5, 9, 6]], dtype=np.float32)[:, ::2],
    ],
    ids=["float32", "float64", "int64", "uint8", "list", "fortran", "strided"],
)
def test_predict_casts_and_matches_reference(predictor: Predictor, rows: object) -> None:
    out = predictor.predict(rows)  # type: ignore[arg-type]
    assert out.dtype == np.float32 and out.shape == (2, 2)
    np.testing.assert_array_equal(out, reference_predictions(np.asarray(rows)))


def test_single_row(predictor: Predictor) -> None:
    np.testing.assert_array_equal(predictor.predict([1, 2, 3]), [[3.375, 1.25]])


def test_equals_onnxruntime(predictor: Predictor, model_path: Path) -> None:
    x = np.random.default_rng(0).normal(scale=50, size=(1000, 3)).astype(np.float32)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    expected = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    np.testing.assert_array_equal(predictor.predict(x), expected)


def test_large_finite_values_are_accepted(predictor: Predictor) -> None:
    # Their float32 sum overflows; the exact check must still let them through.
    big = np.full((4, 3), 3e38, dtype=np.float32)
    assert predictor.predict(big).shape == (4, 2)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (np.zeros((2, 4)), "expected 3 features (temp, rainfall, humidity), got 4"),
        (np.zeros(2), "expected 3 features (temp, rainfall, humidity), got 2"),
        (np.zeros((0, 3)), "expected at least one row"),
        (np.zeros((1, 1, 3)), "got 3 dimensions"),
        (np.array([[1.0, np.nan, 3.0]]), "non-finite value nan at row 0, feature 'rainfall'"),
        (np.array([[1.0, 2.0, -np.inf]]), "non-finite value -inf at row 0, feature 'humidity'"),
        (np.array([["1", "2", "x"]]), "expected numbers"),
        (np.array([[1, None, 3]], dtype=object), "non-finite value nan"),
        (np.array([[1 + 2j, 0, 0]]), "expected numbers"),
    ],
    ids=["wide", "short-row", "empty", "3d", "nan", "inf", "strings", "none", "complex"],
)
def test_bad_input_raises_input_error(predictor: Predictor, rows: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        predictor.predict(rows)


def test_nan_among_many_rows_is_located(predictor: Predictor) -> None:
    x = np.ones((10_000, 3), dtype=np.float32)
    x[7_777, 2] = np.nan
    with pytest.raises(InputError, match="row 7777, feature 'humidity'"):
        predictor.predict(x)


def test_float64_overflow_to_inf_is_rejected(predictor: Predictor) -> None:
    with pytest.raises(InputError, match="non-finite"):
        predictor.predict(np.array([[1e300, 0.0, 0.0]]))


def test_predict_columns_any_order_extra_ignored(predictor: Predictor) -> None:
    columns = {"humidity": [3, 6], "note": ["a", "b"], "temp": [1, 4], "rainfall": [2.0, 5.0]}
    expected = reference_predictions(np.array([[1, 2, 3], [4, 5, 6]]))
    np.testing.assert_array_equal(predictor.predict_columns(columns), expected)


def test_predict_columns_pyarrow_table(predictor: Predictor) -> None:
    pa = needs("pyarrow")
    table = pa.table({"rainfall": [2.0], "temp": [1.0], "humidity": [3.0], "id": ["x"]})
    np.testing.assert_array_equal(predictor.predict_columns(table), [[3.375, 1.25]])
    batch = table.to_batches()[0]
    np.testing.assert_array_equal(predictor.predict_columns(batch), [[3.375, 1.25]])


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"temp": [1], "rainfall": [2]}, "missing column\\(s\\) humidity"),
        ({"temp": [1], "rainfall": [2, 3], "humidity": [3]}, "different lengths"),
        ({"temp": ["a"], "rainfall": [2], "humidity": [3]}, "column 'temp' is not numeric"),
        ({"temp": [np.nan], "rainfall": [2], "humidity": [3]}, "non-finite"),
    ],
)
def test_predict_columns_errors(
    predictor: Predictor, columns: dict[str, list[object]], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        predictor.predict_columns(columns)


def test_manifest_match_is_checked(model_path: Path) -> None:
    _write_manifest(model_path, hashlib.sha256(model_path.read_bytes()).hexdigest())
    assert Predictor(model_path).manifest_checked is True
    assert Predictor(model_path, check_manifest=False).manifest_checked is False


def test_manifest_mismatch_is_refused_with_opt_out(model_path: Path) -> None:
    _write_manifest(model_path, "0" * 64)
    with pytest.raises(ArtifactError, match=r"changed since manifest\.json") as err:
        Predictor(model_path)
    assert "--no-manifest-check" in str(err.value)
    assert "check_manifest=False" in str(err.value)
    assert Predictor(model_path, check_manifest=False).manifest_checked is False


def test_unreadable_manifest(model_path: Path) -> None:
    (model_path.parent / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match=r"unreadable manifest.*--no-manifest-check"):
        Predictor(model_path)


def test_manifest_about_other_files_is_not_a_match(model_path: Path) -> None:
    (model_path.parent / MANIFEST_FILE).write_text(json.dumps({"artifacts": {"x.onnx": {}}}))
    assert Predictor(model_path).manifest_checked is False


@pytest.mark.parametrize("damage", ["missing", "empty", "garbage", "truncated", "directory"])
def test_bad_model_file(model_path: Path, damage: str) -> None:
    data = model_path.read_bytes()
    if damage == "missing":
        model_path.unlink()
    elif damage == "empty":
        model_path.write_bytes(b"")
    elif damage == "garbage":
        model_path.write_bytes(b"this is not an onnx model\n" * 10)
    elif damage == "truncated":
        model_path.write_bytes(data[: len(data) // 2])
    else:
        model_path.unlink()
        model_path.mkdir()
    with pytest.raises(ArtifactError, match=str(model_path.name)):
        Predictor(model_path)


def test_session_options(model_path: Path) -> None:
    predictor = Predictor(model_path, intra_op_threads=1, allow_spinning=False)
    options = predictor.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    np.testing.assert_array_equal(predictor.predict([1, 2, 3]), [[3.375, 1.25]])
    with pytest.raises(ValueError, match="intra_op_threads"):
        Predictor(model_path, intra_op_threads=0)


def test_cuda_provider_preferred_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(session_module.ort, "get_available_providers", lambda: available)
    assert session_module.default_providers() == available
    monkeypatch.setattr(session_module.ort, "get_available_providers", lambda: available[1:])
    assert session_module.default_providers() == ["CPUExecutionProvider"]


def test_concurrent_calls_agree(predictor: Predictor) -> None:
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(rng.integers(1, 50), 3)).astype(np.float32) for _ in range(64)]
    expected = [reference_predictions(x) for x in inputs]
    results: list[np.ndarray | None] = [None] * len(inputs)

    def work(worker: int) -> None:
        for _ in range(5):
            for i in range(worker, len(inputs), 8):
                results[i] = predictor.predict(inputs[i])

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # type: ignore[arg-type]


def test_lazy_export() -> None:
    import pomona.runtime

    assert pomona.runtime.Predictor is Predictor
    with pytest.raises(AttributeError):
        _ = pomona.runtime.Nope  # type: ignore[attr-defined]


class _FakeSession:
    def __init__(self, providers: list[str]) -> None:
        self.providers = providers
        self._sess = type("Compiled", (), {"run": staticmethod(lambda *args: "compiled")})()

    def get_providers(self) -> list[str]:
        return self.providers

    def run(self, *args: object) -> str:
        return "public"


def test_compiled_run_only_on_cpu() -> None:
    cpu = session_module.fast_run(_FakeSession(["CPUExecutionProvider"]))  # type: ignore[arg-type]
    assert cpu([], {}, None) == "compiled"
    cuda = _FakeSession(["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert session_module.fast_run(cuda)([], {}, None) == "public"  # type: ignore[arg-type]
