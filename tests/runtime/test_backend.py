"""Backends: choosing one, the numpy backend's reader and refusals, the CLI's --backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from pomona.runtime import backends
from pomona.runtime.artifacts import INPUT_NAME, ONNX_FILE, OUTPUT_NAME
from pomona.runtime.backends import BACKENDS, choose_backend, open_backend
from pomona.runtime.backends.numpy_backend import SUPPORTED_OPS
from pomona.runtime.errors import ArtifactError
from pomona.runtime.model_info import describe
from pomona.runtime.onnx_proto import read_graph, read_header
from pomona.runtime.predict_cli import info, predict
from pomona.runtime.predictor import Predictor
from pomona.runtime.system import available_cpus
from tests.conftest import SUBPROCESS_TIMEOUT
from tests.onnx_models import make_linear_onnx, reference_predictions


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_linear_onnx(tmp_path / ONNX_FILE)


def _no_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "onnxruntime_missing", lambda: "No module named 'onnxruntime'")


# -- choosing ----------------------------------------------------------------------------


def test_auto_prefers_onnxruntime_and_falls_back_to_numpy(
    monkeypatch: pytest.MonkeyPatch, model: Path
) -> None:
    assert BACKENDS == ("auto", "onnxruntime", "numpy")
    assert choose_backend() == ("onnxruntime", "auto: onnxruntime imports")
    assert choose_backend("numpy") == ("numpy", "asked for")
    assert Predictor(model).backend == "onnxruntime"
    _no_onnxruntime(monkeypatch)
    assert choose_backend() == (
        "numpy",
        "auto: onnxruntime cannot be imported (No module named 'onnxruntime')",
    )
    assert Predictor(model).backend == "numpy"
    with pytest.raises(ArtifactError, match="onnxruntime backend is not available"):
        Predictor(model, backend="onnxruntime")
    with pytest.raises(ArtifactError, match="onnxruntime backend is not available"):
        choose_backend("auto", "model.ort")  # only onnxruntime reads ORT files


def test_numpy_refuses_ort_files_and_unknown_names_are_refused() -> None:
    with pytest.raises(ArtifactError, match=r"numpy backend reads \.onnx files, not"):
        choose_backend("numpy", "model.ort")
    with pytest.raises(ValueError, match="backend must be one of auto, onnxruntime, numpy"):
        choose_backend("tensorrt")
    with pytest.raises(ValueError, match="intra_op_threads"):
        open_backend(Path("model.onnx"), "numpy", intra_op_threads=0)


def test_numpy_backend_predicts_exactly_on_exact_weights(model: Path) -> None:
    numpy, ort = Predictor(model, backend="numpy"), Predictor(model, backend="onnxruntime")
    assert (numpy.backend, numpy.providers) == ("numpy", [])
    assert ort.providers == ["CPUExecutionProvider"]
    assert numpy.feature_names == ort.feature_names and numpy.metadata == ort.metadata
    assert numpy.inputs == ort.inputs and numpy.outputs == ort.outputs
    x = np.random.default_rng(0).integers(-64, 65, (1000, 3)).astype(np.float32)
    out = numpy.predict(x)
    assert out.dtype == np.float32 and out.shape == (1000, 2)
    np.testing.assert_array_equal(out, reference_predictions(x))
    np.testing.assert_array_equal(out, ort.predict(x))
    before = x.copy()
    numpy.predict(x)
    np.testing.assert_array_equal(x, before)  # the caller's array is never written to


def test_onnxruntime_threads_default_to_the_cpus_this_process_may_use(model: Path) -> None:
    options = Predictor(model, backend="onnxruntime").session.get_session_options()
    assert options.intra_op_num_threads == available_cpus()


# -- the reader --------------------------------------------------------------------------


def test_reader_agrees_with_the_onnx_package(tmp_path: Path) -> None:
    path = _graph_file(tmp_path, _mlp_nodes(), _mlp_initializers(), opset=18)
    proto = onnx.load(str(path))
    graph = read_graph(path.read_bytes())
    assert [n.op_type for n in graph.nodes] == [n.op_type for n in proto.graph.node]
    assert [n.inputs for n in graph.nodes] == [list(n.input) for n in proto.graph.node]
    for tensor in proto.graph.initializer:
        np.testing.assert_array_equal(
            graph.initializers[tensor.name], numpy_helper.to_array(tensor)
        )
    assert graph.nodes[2].attributes["transB"].value == 1
    assert graph.nodes[2].attributes["alpha"].value == pytest.approx(0.5)
    assert [i.name for i in graph.inputs] == [INPUT_NAME]  # initializers dropped from inputs
    assert graph.inputs[0].shape == ["batch", 3] and graph.outputs[0].type == "tensor(float)"
    assert read_header(path.read_bytes()) == {
        "ir_version": proto.ir_version,
        "opset": {"": 18},
        "producer": "",
    }


def test_float_data_initializers_and_gemm_attributes(tmp_path: Path) -> None:
    """Weights in float_data (not raw_data), alpha/beta and transB: numpy == onnxruntime."""
    path = _graph_file(tmp_path, _mlp_nodes(), _mlp_initializers(raw=False), opset=18)
    assert not onnx.load(str(path)).graph.initializer[0].raw_data
    x = np.random.default_rng(1).normal(size=(2500, 3)).astype(np.float32)  # > one chunk
    before = x.copy()
    expected = Predictor(path, backend="onnxruntime").predict(x)
    got = Predictor(path, backend="numpy").predict(x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(x, before)  # Sub reads the caller's rows: never in place


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("op", "cannot run this model: operator 'Sigmoid' (it runs Add, Div, Gemm, Mul, Relu, Sub"),
        ("attribute", "attribute 'transA' of operator 'Gemm' other than 0"),
        ("unknown_attribute", "attribute 'axis' of operator 'Relu'"),
        ("domain", "operator set domain 'com.microsoft'"),
        ("int64", "initializer 'W' is int64, not float"),
        ("computed_weight", "operator 'Gemm' with weights that are not initializers"),
    ],
)
def test_numpy_backend_refuses_what_it_does_not_run(
    tmp_path: Path, change: str, message: str
) -> None:
    nodes, initializers, opset = _mlp_nodes(), _mlp_initializers(), 18
    if change == "op":
        nodes[3] = helper.make_node("Sigmoid", ["h"], ["r"])
    elif change == "attribute":
        nodes[2] = helper.make_node("Gemm", ["s", "W", "b"], ["h"], transA=1)
    elif change == "unknown_attribute":
        nodes[3] = helper.make_node("Relu", ["h"], ["r"], axis=1)
    elif change == "domain":
        nodes[3] = helper.make_node("FusedGemm", ["h", "W2", "b2"], ["r"], domain="com.microsoft")
    elif change == "int64":
        initializers[0] = numpy_helper.from_array(np.ones((4, 3), dtype=np.int64), "W")
    else:
        nodes[2] = helper.make_node("Gemm", ["s", "s", "b"], ["h"], transB=1)
    path = _graph_file(tmp_path, nodes, initializers, opset, check=False)
    with pytest.raises(ArtifactError) as caught:
        Predictor(path, backend="numpy")
    text = str(caught.value)
    assert message in text, text
    assert "the numpy backend cannot run this model" in text or "not a valid" in text
    assert text.startswith(str(path))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_numpy_backend_refuses_damaged_files(model: Path, damage: str) -> None:
    data = model.read_bytes()
    model.write_bytes(
        {"garbage": b"\xff" * 64, "truncated": data[: len(data) // 2], "empty": b""}[damage]
    )
    with pytest.raises(ArtifactError, match="not a valid ONNX model"):
        Predictor(model, backend="numpy")


def test_supported_ops_are_the_exported_graphs_ops() -> None:
    assert sorted(SUPPORTED_OPS) == ["Add", "Div", "Gemm", "Mul", "Relu", "Sub"]


# -- command line ------------------------------------------------------------------------


def test_cli_backend_option(model: Path, tmp_path: Path) -> None:
    source = tmp_path / "rows.csv"
    source.write_text("temp,rainfall,humidity\n1,2,3\n")
    runner = CliRunner()
    for backend in BACKENDS:
        result = runner.invoke(predict, [str(model), str(source), "--backend", backend])
        assert result.exit_code == 0, result.output
        assert result.output == "apples,oranges\n3.375,1.25\n"
    result = runner.invoke(predict, [str(model), str(source), "--backend", "gpu"])
    assert result.exit_code == 2 and "'gpu' is not one of" in result.output
    result = runner.invoke(info, [str(model), "--backend", "numpy"])
    assert result.exit_code == 0 and "backend    numpy (asked for)" in result.output
    facts = json.loads(runner.invoke(info, [str(model), "--json"]).output)
    assert facts["backend"] == {"name": "onnxruntime", "reason": "auto: onnxruntime imports"}
    assert describe(model, "numpy")["inputs"] == facts["inputs"]


_BLOCK_ONNXRUNTIME = """
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'onnxruntime':
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
"""
_RUN_CLI = """
import json, sys
{block}
from pomona.runtime.cli import main
main(sys.argv[1:], standalone_mode=False)
print(json.dumps(sorted(m for m in sys.modules if m.startswith('onnxruntime'))))
"""


def _cli(block: bool, *args: str | Path) -> subprocess.CompletedProcess[str]:
    code = _RUN_CLI.format(block=_BLOCK_ONNXRUNTIME if block else "")
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True, text=True, check=False, timeout=SUBPROCESS_TIMEOUT,
    )  # fmt: skip


@pytest.mark.parametrize("block", [True, False])
def test_runtime_runs_where_onnxruntime_does_not_import(
    model: Path, tmp_path: Path, block: bool
) -> None:
    """Without onnxruntime, auto runs numpy; with it, --backend numpy never imports it."""
    source = tmp_path / "rows.csv"
    source.write_text("temp,rainfall,humidity\n1,2,3\n")
    out = tmp_path / "out.csv"
    result = _cli(
        block, "predict", model, source, "-o", out, *([] if block else ["--backend", "numpy"])
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []
    assert out.read_text() == "apples,oranges\n3.375,1.25\n"
    if block:
        shown = _cli(block, "info", model)
        expected = "backend    numpy (auto: onnxruntime cannot be imported (No module named"
        assert expected in shown.stdout, shown.stdout + shown.stderr


def test_serving_app_loads_with_the_numpy_backend(model: Path) -> None:
    from pomona.runtime.serve.app import create_app

    app = create_app(model, backend="numpy")
    assert app.predictor.backend == "numpy"
    np.testing.assert_array_equal(app.predictor.predict([1, 2, 3]), [[3.375, 1.25]])


# -- graph builders ----------------------------------------------------------------------


def _mlp_nodes() -> list[onnx.NodeProto]:
    """Sub/Div, Gemm (alpha 0.5, transB), Relu, Gemm (beta 2), Mul/Add: every supported op."""
    return [
        helper.make_node("Sub", [INPUT_NAME, "mean"], ["c"]),
        helper.make_node("Div", ["c", "std"], ["s"]),
        helper.make_node("Gemm", ["s", "W", "b"], ["h"], alpha=0.5, transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], beta=2.0),
        helper.make_node("Mul", ["y", "scale"], ["m"]),
        helper.make_node("Add", ["m", "shift"], [OUTPUT_NAME]),
    ]


def _mlp_initializers(raw: bool = True) -> list[onnx.TensorProto]:
    rng = np.random.default_rng(3)
    arrays = {
        "W": rng.normal(size=(4, 3)),
        "b": rng.normal(size=4),
        "W2": rng.normal(size=(4, 2)),
        "b2": rng.normal(size=2),
        "mean": np.array([1.0, -2.0, 3.0]),
        "std": np.array([2.0, 0.5, 4.0]),
        "scale": np.array([3.0, 0.25]),
        "shift": np.array([10.0, -1.0]),
    }
    if raw:
        return [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()]
    return [
        helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.astype(np.float32).ravel().tolist())
        for n, a in arrays.items()
    ]


def _graph_file(
    tmp_path: Path,
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    opset: int,
    check: bool = True,
) -> Path:
    graph = helper.make_graph(
        nodes,
        "pomona",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 2])],
        initializer=initializers,
    )
    imports = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    uses_ms = any(n.domain == "com.microsoft" for n in nodes)
    model = helper.make_model(graph, opset_imports=imports if uses_ms else imports[:1])
    model.ir_version = 10
    if check:
        onnx.checker.check_model(model, full_check=True)
    path = tmp_path / ONNX_FILE
    onnx.save_model(model, str(path))
    return path
