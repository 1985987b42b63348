"""Tests for electra_jax.task_metrics against scikit-learn and scipy."""

import numpy as np
import pytest

from electra_jax import task_metrics as tm
from electra_jax.errors import UserInputError

sklearn_metrics = pytest.importorskip("sklearn.metrics")
scipy_stats = pytest.importorskip("scipy.stats")


def _rng(seed):
  return np.random.default_rng(seed)


@pytest.mark.parametrize("seed", range(5))
def test_accuracy_and_f1_match_sklearn(seed):
  rng = _rng(seed)
  n = int(rng.integers(5, 300))
  labels = rng.integers(0, 2, n)
  # Correlated predictions so scores are not all near 0.5.
  preds = np.where(rng.random(n) < 0.7, labels, 1 - labels)
  assert tm.accuracy(labels, preds) == pytest.approx(
      sklearn_metrics.accuracy_score(labels, preds), abs=1e-12)
  assert tm.f1(labels, preds) == pytest.approx(
      sklearn_metrics.f1_score(labels, preds), abs=1e-12)


def test_f1_edge_cases():
  # No positives anywhere: defined as 0 (sklearn's zero_division default).
  z = np.zeros(6, dtype=int)
  assert tm.f1(z, z) == 0.0
  assert sklearn_metrics.f1_score(z, z, zero_division=0) == 0.0
  # Positives exist but none predicted, and the reverse.
  assert tm.f1([1, 0, 1], [0, 0, 0]) == 0.0
  assert tm.f1([0, 0, 0], [1, 0, 0]) == 0.0
  assert tm.f1([1, 1], [1, 1]) == 1.0
  # Float 0./1. class ids are accepted.
  assert tm.f1(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(
      2 / 3)
  with pytest.raises(ValueError, match="binary"):
    tm.f1([0, 1, 2], [0, 1, 1])


@pytest.mark.parametrize("num_classes", [2, 3, 5])
@pytest.mark.parametrize("seed", range(3))
def test_mcc_matches_sklearn(num_classes, seed):
  rng = _rng(100 * num_classes + seed)
  n = int(rng.integers(10, 400))
  labels = rng.integers(0, num_classes, n)
  preds = np.where(rng.random(n) < 0.5, labels,
                   rng.integers(0, num_classes, n))
  assert tm.matthews_corrcoef(labels, preds) == pytest.approx(
      sklearn_metrics.matthews_corrcoef(labels, preds), abs=1e-12)


def test_mcc_edge_cases():
  # A constant prediction (or constant labels) makes the denominator 0.
  assert tm.matthews_corrcoef([0, 1, 1, 0], [1, 1, 1, 1]) == 0.0
  assert tm.matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0
  assert sklearn_metrics.matthews_corrcoef([0, 1, 1, 0], [1, 1, 1, 1]) == 0.0
  assert tm.matthews_corrcoef([0, 1, 2, 0], [0, 1, 2, 0]) == 1.0
  assert tm.matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == -1.0
  # Classes present in only one of the two arrays, and string classes.
  labels = ["a", "b", "c", "a", "b"]
  preds = ["a", "b", "b", "d", "b"]
  assert tm.matthews_corrcoef(labels, preds) == pytest.approx(
      sklearn_metrics.matthews_corrcoef(labels, preds), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_pearson_spearman_match_scipy_with_ties(seed):
  rng = _rng(seed)
  n = int(rng.integers(5, 200))
  x = rng.normal(size=n)
  y = x + rng.normal(scale=1.0, size=n)
  if seed % 2:
    # Many ties (as STS-B's 0-5 scores in steps of 0.2 have).
    x = np.round(x * 2) / 2
    y = np.round(y)
  assert tm.pearson(x, y) == pytest.approx(
      scipy_stats.pearsonr(x, y)[0], abs=1e-10)
  assert tm.spearman(x, y) == pytest.approx(
      scipy_stats.spearmanr(x, y)[0], abs=1e-10)
  np.testing.assert_allclose(tm.rankdata(x), scipy_stats.rankdata(x))


def test_rankdata_averages_ties():
  np.testing.assert_array_equal(
      tm.rankdata([10, 20, 10, 30, 20, 20]), [1.5, 4, 1.5, 6, 4, 4])


def test_correlation_edge_cases():
  assert tm.pearson([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]) == 0.0
  assert tm.spearman([0.0, 1.0, 2.0], [3.0, 3.0, 3.0]) == 0.0
  assert tm.pearson([2.0], [1.0]) == 0.0
  assert np.isnan(tm.pearson([0.0, np.nan, 1.0], [0.0, 1.0, 2.0]))
  assert np.isnan(tm.spearman([0.0, 1.0, 2.0], [0.0, np.inf, 2.0]))
  assert tm.spearman([1, 2, 3], [1, 4, 9]) == pytest.approx(1.0)
  assert tm.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_shape_errors():
  with pytest.raises(ValueError, match="differ in length"):
    tm.accuracy([0, 1], [0])
  with pytest.raises(ValueError, match="empty"):
    tm.pearson([], [])
  with pytest.raises(ValueError, match="1-D"):
    tm.accuracy(np.zeros((2, 3)), np.zeros((2, 3)))


def test_compute_by_name():
  labels = np.array([0, 1, 1, 0, 1])
  logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [5.0, 1.0],
                     [0.0, 1.0]])
  out = tm.compute(("f1", "accuracy", "mcc"), labels, logits)
  assert list(out) == ["f1", "accuracy", "mcc"]
  preds = logits.argmax(-1)
  assert out["accuracy"] == pytest.approx(0.8)
  assert out["f1"] == pytest.approx(sklearn_metrics.f1_score(labels, preds))
  assert out["mcc"] == pytest.approx(
      sklearn_metrics.matthews_corrcoef(labels, preds))
  assert all(isinstance(v, float) for v in out.values())
  # Regression predictions as [N, 1].
  y = np.array([0.0, 1.0, 2.5, 4.0])
  out = tm.compute(["spearman", "pearson"], y, (y ** 2)[:, None])
  assert out["spearman"] == pytest.approx(1.0)
  assert out["pearson"] == pytest.approx(scipy_stats.pearsonr(y, y ** 2)[0])
  assert tm.compute("accuracy", [1, 0], [1, 1]) == {"accuracy": 0.5}
  with pytest.raises(UserInputError, match="unknown metric.*'auc'"):
    tm.compute(["accuracy", "auc"], labels, preds)
