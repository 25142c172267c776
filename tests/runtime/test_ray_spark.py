"""The Spark recipe of docs/scale.md, run in Spark's local mode.

pyspark is not installed by ``make install`` (it is large); ``pip install pyspark`` (and a
Java runtime, 17 or newer) to run this test.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from pomona.runtime.predictor import Predictor
from tests.onnx_models import make_linear_onnx

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("pyspark") is None,
        reason="pyspark is not installed (pip install pyspark to run the Spark recipe)",
    ),
    pytest.mark.skipif(
        shutil.which("java") is None, reason="no Java runtime for Spark (install Java 17+)"
    ),
    # pyspark and its pandas bridge warn about their own deprecations.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


def test_predict_batch_udf_recipe_equals_predictor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import SparkSession
    from pyspark.sql.functions import array, col
    from pyspark.sql.types import ArrayType, FloatType

    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)  # workers: this environment's Python
    path = str(make_linear_onnx(tmp_path / "model.onnx"))
    x = np.random.default_rng(0).uniform(-50, 50, size=(1000, 3)).astype(np.float32)
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    try:
        spark.sparkContext.setLogLevel("ERROR")
        rows = [(i, *map(float, r)) for i, r in enumerate(x)]
        df = spark.createDataFrame(rows, ["id", "temp", "rainfall", "humidity"])
        # The recipe (docs/scale.md): one Predictor per Python worker, batches of rows.
        predict = predict_batch_udf(
            make_predict_fn=lambda: Predictor(path).predict,
            return_type=ArrayType(FloatType()),
            batch_size=256,
            input_tensor_shapes=[[3]],
        )
        features = array(col("temp"), col("rainfall"), col("humidity"))
        out = df.withColumn("predictions", predict(features)).orderBy("id").collect()
    finally:
        spark.stop()
    got = np.array([r["predictions"] for r in out], dtype=np.float32)
    np.testing.assert_array_equal(got, Predictor(path).predict(x))
