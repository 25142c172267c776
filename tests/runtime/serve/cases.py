"""Requests shared by the serving tests: the malformed-request battery and small helpers."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np

MAX_BODY = 256 * 1024  # small limit, so oversized bodies are cheap to send
INFER = "/v2/models/pomona/infer"


def features_tensor(x: np.ndarray, datatype: str = "FP32") -> dict[str, object]:
    return {"name": "features", "shape": list(x.shape), "datatype": datatype, "data": x.tolist()}


# -- malformed requests ---------------------------------------------------------------------

ONE = {"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}
_RAW = np.ones((1, 3), dtype="<f4").tobytes()


def doc(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def _binary(
    size: int, extra: bytes = b"", declared: int | None = None, **fields: object
) -> tuple[bytes, dict]:
    tensor = {"name": "features", "shape": [1, 3], "datatype": "FP32", **fields}
    head = doc(inputs=[{**tensor, "parameters": {"binary_data_size": size}}])
    length = len(head) if declared is None else declared
    return head + _RAW + extra, {"Inference-Header-Content-Length": str(length)}


_BIG_BODY = b" " * (MAX_BODY + 1)
_nan_body, _nan_headers = _binary(12)
_nan_body = _nan_body[: -len(_RAW)] + np.array([[1, np.nan, 3]], dtype="<f4").tobytes()

# (id, method, path, body, headers, status, message pattern)
BAD_REQUESTS: list[tuple[str, str, str, bytes | None, dict, int, str]] = [
    ("malformed-json", "POST", INFER, b'{"inputs": [', {}, 400, "malformed JSON"),
    ("not-utf8", "POST", INFER, b"\xff\xfe", {}, 400, "malformed JSON"),
    ("empty-body", "POST", INFER, b"", {}, 400, "malformed JSON"),
    ("not-an-object", "POST", INFER, b"[1, 2]", {}, 400, "JSON object"),
    ("no-inputs", "POST", INFER, doc(id="x"), {}, 400, "'inputs'"),
    ("inputs-not-list", "POST", INFER, doc(inputs={"a": 1}), {}, 400, "'inputs'"),
    ("missing-input", "POST", INFER, doc(inputs=[]), {}, 400, "missing input 'features'"),
    (
        "extra-input",
        "POST",
        INFER,
        doc(inputs=[ONE, {**ONE, "name": "other"}]),
        {},
        400,
        "unexpected input 'other'",
    ),
    ("duplicate-input", "POST", INFER, doc(inputs=[ONE, ONE]), {}, 400, "more than once"),
    ("input-not-object", "POST", INFER, doc(inputs=[3]), {}, 400, "JSON object"),
    ("no-name", "POST", INFER, doc(inputs=[{"shape": [1, 3]}]), {}, 400, "'name'"),
    (
        "shape-data-mismatch",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "shape": [2, 3]}]),
        {},
        400,
        "holds 3 values",
    ),
    (
        "wrong-feature-count",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "shape": [1, 4], "data": [1, 2, 3, 4]}]),
        {},
        400,
        r"\[rows, 3\]",
    ),
    ("one-dim-shape", "POST", INFER, doc(inputs=[{**ONE, "shape": [3]}]), {}, 400, "shape"),
    ("bad-shape", "POST", INFER, doc(inputs=[{**ONE, "shape": [1, -3]}]), {}, 400, "shape"),
    (
        "no-rows",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "shape": [0, 3], "data": []}]),
        {},
        400,
        "row",
    ),
    (
        "ragged-data",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "shape": [2, 3], "data": [[1, 2, 3], [4, 5]]}]),
        {},
        400,
        "ragged",
    ),
    (
        "nested-wrong-shape",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "shape": [2, 3], "data": [[1, 2], [3, 4], [5, 6]]}]),
        {},
        400,
        "nested",
    ),
    (
        "string-data",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "data": [1, "2", 3]}]),
        {},
        400,
        "only numbers",
    ),
    (
        "bool-data",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "data": [True, False, True]}]),
        {},
        400,
        "only numbers",
    ),
    (
        "bool-among-numbers",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "data": [1.5, True, 0.0]}]),
        {},
        400,
        "only numbers",
    ),
    (
        "bool-in-large-data",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "shape": [200, 3], "data": [1.0, 0.0, 2.5] * 199 + [1.0, False, 2]}]),
        {},
        400,
        "only numbers",
    ),
    (
        "bool-in-nested-data",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "shape": [2, 3], "data": [[1.0, 0.0, 2.0], [3.0, True, 4.0]]}]),
        {},
        400,
        "only numbers",
    ),
    (
        "bool-in-int-data",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "datatype": "INT32", "data": [1, True, 3]}]),
        {},
        400,
        "only integers",
    ),
    (
        "string-in-large-data",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "shape": [200, 3], "data": [1.5] * 599 + ["x"]}]),
        {},
        400,
        "only numbers",
    ),
    (
        "overflow-in-large-data",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "shape": [200, 3], "data": [1.5] * 599 + [1e300]}]),
        {},
        400,
        "non-finite",
    ),
    ("null-data", "POST", INFER, doc(inputs=[{**ONE, "data": None}]), {}, 400, "'data'"),
    (
        "null-in-large-data",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "shape": [500, 3], "data": [1.5] * 1499 + [None]}]),
        {},
        400,
        "only numbers",
    ),
    (
        "ragged-large-data",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "shape": [500, 3], "data": [[1.5, 2.5, 3.5, 4.5], [5.5, 6]] * 250}]),
        {},
        400,
        "ragged",
    ),
    (
        "large-data-then-garbage",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "shape": [500, 3], "data": [1.5] * 1500}]) + b"]",
        {},
        400,
        "malformed JSON",
    ),
    (
        "float-for-int",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "datatype": "INT32", "data": [1.5, 2, 3]}]),
        {},
        400,
        "only integers",
    ),
    (
        "non-finite-overflow",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "datatype": "FP64", "data": [1, 1e300, 3]}]),
        {},
        400,
        "non-finite",
    ),
    ("non-finite-binary", "POST", INFER, _nan_body, _nan_headers, 400, "non-finite"),
    (
        "unknown-datatype",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "datatype": "FLOAT"}]),
        {},
        400,
        "unknown datatype",
    ),
    (
        "unsupported-datatype",
        "POST",
        INFER,
        doc(inputs=[{**ONE, "datatype": "BYTES"}]),
        {},
        400,
        "not supported",
    ),
    ("id-not-string", "POST", INFER, doc(id=5, inputs=[ONE]), {}, 400, "'id'"),
    (
        "bad-binary-output-flag",
        "POST",
        INFER,
        doc(inputs=[ONE], parameters={"binary_data_output": "yes"}),
        {},
        400,
        "binary_data_output",
    ),
    (
        "unknown-output",
        "POST",
        INFER,
        doc(inputs=[ONE], outputs=[{"name": "nope"}]),
        {},
        400,
        "unknown output 'nope'",
    ),
    ("binary-size-mismatch", "POST", INFER, *_binary(8), 400, "binary_data_size 8"),
    ("binary-trailing-bytes", "POST", INFER, *_binary(12, b"xx"), 400, "belong to no input"),
    ("binary-header-too-long", "POST", INFER, *_binary(12, declared=10_000), 400, "exceeds"),
    (
        "binary-header-not-int",
        "POST",
        INFER,
        doc(inputs=[ONE]),
        {"Inference-Header-Content-Length": "ten"},
        400,
        "Inference-Header-Content-Length",
    ),
    ("binary-and-data", "POST", INFER, *_binary(12, data=[1, 2, 3]), 400, "both"),
    ("oversized-body", "POST", INFER, _BIG_BODY, {}, 413, "exceeds the limit"),
    (
        "oversized-after-gzip",
        "POST",
        INFER,
        gzip.compress(b" " * (MAX_BODY * 4)),
        {"Content-Encoding": "gzip"},
        413,
        "exceeds the limit",
    ),
    (
        "bad-gzip",
        "POST",
        INFER,
        b"not gzip at all",
        {"Content-Encoding": "gzip"},
        400,
        "not valid gzip",
    ),
    (
        "truncated-deflate",
        "POST",
        INFER,
        zlib.compress(doc(inputs=[ONE]))[:-6],
        {"Content-Encoding": "deflate"},
        400,
        "truncated",
    ),
    (
        "unknown-encoding",
        "POST",
        INFER,
        doc(inputs=[ONE]),
        {"Content-Encoding": "br"},
        415,
        "Content-Encoding",
    ),
    ("unknown-model", "POST", "/v2/models/other/infer", doc(inputs=[ONE]), {}, 404, "other"),
    ("unknown-model-meta", "GET", "/v2/models/other", None, {}, 404, "unknown model"),
    ("unknown-version", "GET", "/v2/models/pomona/versions/7/ready", None, {}, 404, "version"),
    ("unknown-path", "GET", "/v1/models/pomona:predict", None, {}, 404, "no such endpoint"),
    ("get-infer", "GET", INFER, None, {}, 405, "not allowed"),
    ("post-health", "POST", "/v2/health/live", b"{}", {}, 405, "not allowed"),
    ("delete-model", "DELETE", "/v2/models/pomona", None, {}, 405, "not allowed"),
]
