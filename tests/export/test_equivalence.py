"""The tolerance rule and the report, on hand-made arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pomona.export.equivalence import (
    SPAN_SIGMAS,
    EquivalenceError,
    EquivalenceReport,
    compare_outputs,
    evaluation_rows,
)
from pomona.runtime.artifacts import (
    ATOL,
    ONNX_FILE,
    RTOL,
    TOLERANCE_RULE,
    TORCHSCRIPT_FILE,
    allowed_difference,
)


def test_allowed_difference_scales_with_each_output_column() -> None:
    reference = np.array([[0.5, 1000.0], [-0.25, -10.0]])
    allowed = allowed_difference(reference)
    expected = np.array(
        [
            [ATOL * 1 + RTOL * 0.5, ATOL * 1000 + RTOL * 1000],
            [ATOL * 1 + RTOL * 0.25, ATOL * 1000 + RTOL * 10],
        ]
    )
    np.testing.assert_allclose(allowed, expected, rtol=1e-12)


@pytest.mark.parametrize(("factor", "passed"), [(0.99, True), (1.01, False)])
def test_compare_passes_exactly_up_to_the_tolerance(factor: float, passed: bool) -> None:
    reference = np.array([[2.0, -300.0], [1.0, 50.0]])
    actual = reference + factor * allowed_difference(reference)
    check = compare_outputs(ONNX_FILE, {1: actual, 7: reference}, reference)
    assert check.passed is passed
    assert check.worst_fraction_of_tolerance == pytest.approx(factor)
    assert check.batch_sizes == (1, 7)
    assert check.max_abs_diff == pytest.approx(factor * allowed_difference(reference).max())
    assert check.max_rel_diff == pytest.approx(
        (factor * allowed_difference(reference) / np.array([2.0, 300.0])).max()
    )


def test_nan_and_shape_mismatch_fail() -> None:
    reference = np.zeros((3, 2))
    nan = reference.copy()
    nan[1, 1] = np.nan
    assert not compare_outputs(TORCHSCRIPT_FILE, {1: nan}, reference).passed
    assert compare_outputs(
        TORCHSCRIPT_FILE, {1: nan}, nan
    ).passed  # NaN where the reference has NaN
    wrong = compare_outputs(TORCHSCRIPT_FILE, {4096: np.zeros((3, 1))}, reference)
    assert not wrong.passed and "output shape (3, 1)" in (wrong.problem or "")


def test_error_names_every_failing_artifact() -> None:
    reference = np.ones((4, 1))
    checks = (
        compare_outputs(TORCHSCRIPT_FILE, {1: reference + 0.5}, reference),
        compare_outputs(ONNX_FILE, {1: reference * 3}, reference),
    )
    report = EquivalenceReport(checks, rows=4, training_rows=0, random_rows=4, batch_sizes=(1,))
    error = EquivalenceError(report)
    assert f"{TORCHSCRIPT_FILE}: max abs diff 0.5, max rel diff 0.5" in str(error)
    assert f"{ONNX_FILE}: max abs diff 2, max rel diff 2" in str(error)
    data = report.as_dict()
    assert data["passed"] is False
    assert set(data["checks"]) == {TORCHSCRIPT_FILE, ONNX_FILE}
    assert (data["atol"], data["rtol"], data["tolerance"]) == (ATOL, RTOL, TOLERANCE_RULE)
    inf = compare_outputs("x", {1: np.zeros((1, 1))}, np.full((1, 1), math.nan))
    assert EquivalenceReport((inf,), 1, 0, 1, (1,)).as_dict()["checks"]["x"]["max_abs_diff"] is None


def test_evaluation_rows_span_beyond_the_training_range() -> None:
    mean, std = np.array([85.0, -3.0]), np.array([12.0, 0.001])
    training = np.array([[80.0, -3.0], [90.0, -2.999]])
    rows = evaluation_rows(mean, std, training, n_random=10_000)
    assert rows.dtype == np.float32 and rows.shape == (10_002, 2)
    np.testing.assert_array_equal(rows[:2], training.astype(np.float32))
    z = (rows[2:].astype(np.float64) - mean) / std
    assert (np.abs(z) <= SPAN_SIGMAS + 1e-3).all()
    assert (np.abs(z) > 0.8 * SPAN_SIGMAS).any(axis=0).all()
    np.testing.assert_array_equal(rows, evaluation_rows(mean, std, training, n_random=10_000))
