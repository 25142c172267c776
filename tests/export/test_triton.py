"""The Triton model repository, checked with Triton's own ModelConfig schema."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from pomona.export.triton import MAX_BATCH_SIZE, config_pbtxt, valid_model_name
from pomona.runtime.artifacts import INPUT_NAME, ONNX_FILE, OUTPUT_NAME
from tests.export.conftest import CliExport


def _parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_exported_repository_loads_as_a_triton_onnx_model(linear_cli_export: CliExport) -> None:
    model_dir = linear_cli_export.triton_repo / "pomona"
    assert sorted(p.name for p in linear_cli_export.triton_repo.iterdir()) == ["pomona"]
    assert (model_dir / "1" / ONNX_FILE).read_bytes() == (
        linear_cli_export.out / ONNX_FILE
    ).read_bytes()
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt"]
    config = _parse((model_dir / "config.pbtxt").read_text())
    assert config.name == "pomona"
    assert config.backend == "onnxruntime"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == MAX_BATCH_SIZE > 0
    assert config.HasField("dynamic_batching")
    (tensor_in,) = config.input
    (tensor_out,) = config.output
    assert (tensor_in.name, list(tensor_in.dims)) == (INPUT_NAME, [3])
    assert (tensor_out.name, list(tensor_out.dims)) == (OUTPUT_NAME, [2])
    assert tensor_in.data_type == tensor_out.data_type == model_config_pb2.TYPE_FP32
    assert config.version_policy.latest.num_versions == 1


@pytest.mark.parametrize(("name", "features", "targets"), [("crop", 1, 1), ("m-2.v_3", 40, 7)])
def test_config_fields(name: str, features: int, targets: int) -> None:
    config = _parse(config_pbtxt(name, features, targets, max_batch_size=64))
    assert config.name == name and config.max_batch_size == 64
    assert list(config.input[0].dims) == [features]
    assert list(config.output[0].dims) == [targets]


@pytest.mark.parametrize(
    ("name", "valid"),
    [("pomona", True), ("crop_v2.1-a", True), ("", False), ("..", False), (".x", False),
     ("a/b", False), ("a b", False), ('x"y', False)],
)  # fmt: skip
def test_model_names(name: str, valid: bool) -> None:
    assert valid_model_name(name) is valid
