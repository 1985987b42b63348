"""Evaluation metrics for GLUE-style fine-tuning, in plain numpy.

Metric names (what `compute` and `TaskSpec.metrics` use):

  accuracy   fraction of predictions equal to the label.
  f1         binary F1 of the positive class 1.
  mcc        Matthews correlation coefficient; binary and, for more classes,
             Gorodkin's R_K generalisation (what scikit-learn computes).
  pearson    Pearson correlation of two real vectors.
  spearman   Spearman rank correlation; tied values get their average rank.

Edge cases (chosen so that a degenerate model scores 0 instead of NaN, which
would poison averaged scores; the values match scikit-learn's defaults where
it defines one):

  * f1: when there are no true positives, no false positives and no false
    negatives (no positive labels and none predicted) F1 is 0.0 (as
    scikit-learn's default `zero_division`).  Labels and predictions must be
    0/1.
  * mcc: 0.0 when its denominator is 0 (e.g. all predictions, or all labels,
    in one class), as scikit-learn.
  * pearson / spearman: 0.0 when either input is constant (its variance is 0,
    including a single example); scipy returns NaN there.  Any NaN or inf in
    the inputs gives NaN, so a diverged regression model is visible.
  * Empty inputs or inputs of different lengths raise ValueError.

`compute` also accepts per-class scores/logits ([N, C] arrays) for the
classification metrics (argmax is taken) and [N, 1] arrays for regression.
"""

from typing import Callable, Sequence

import numpy as np

from electra_jax.errors import UserInputError

# ----------------------------------------------------------------------------
# Input checks


def _as_1d(name: str, x) -> np.ndarray:
  a = np.asarray(x)
  if a.ndim == 2 and a.shape[1] == 1:
    a = a[:, 0]
  if a.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
  return a


def _pair(a_name: str, a, b_name: str, b) -> tuple[np.ndarray, np.ndarray]:
  a = _as_1d(a_name, a)
  b = _as_1d(b_name, b)
  if a.shape[0] != b.shape[0]:
    raise ValueError(f"{a_name} and {b_name} differ in length "
                     f"({a.shape[0]} vs {b.shape[0]})")
  if a.shape[0] == 0:
    raise ValueError(f"{a_name} and {b_name} are empty")
  return a, b


def _as_class_ids(name: str, a: np.ndarray) -> np.ndarray:
  """Integer class ids; float arrays must hold integral values."""
  if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
    return a.astype(np.int64)
  if np.issubdtype(a.dtype, np.floating):
    if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
      raise ValueError(f"{name} must hold class ids (integers), got "
                       f"non-integral values")
    return a.astype(np.int64)
  raise ValueError(f"{name} must hold class ids, got dtype {a.dtype}")


# ----------------------------------------------------------------------------
# Classification


def accuracy(labels, preds) -> float:
  """Fraction of `preds` equal to `labels` (any comparable values)."""
  labels, preds = _pair("labels", labels, "preds", preds)
  return float(np.mean(labels == preds))


def f1(labels, preds) -> float:
  """Binary F1 of the positive class 1; labels and preds must be 0/1.

  F1 = 2 TP / (2 TP + FP + FN), which is 0.0 when that denominator is 0 (no
  positive labels and none predicted).
  """
  labels, preds = _pair("labels", labels, "preds", preds)
  labels = _as_class_ids("labels", labels)
  preds = _as_class_ids("preds", preds)
  for name, a in (("labels", labels), ("preds", preds)):
    bad = np.setdiff1d(np.unique(a), [0, 1])
    if bad.size:
      raise ValueError(f"f1 is binary: {name} must be 0/1, found "
                       f"{bad[:5].tolist()}")
  tp = int(np.sum((labels == 1) & (preds == 1)))
  fp = int(np.sum((labels == 0) & (preds == 1)))
  fn = int(np.sum((labels == 1) & (preds == 0)))
  denom = 2 * tp + fp + fn
  return 0.0 if denom == 0 else 2.0 * tp / denom


def matthews_corrcoef(labels, preds) -> float:
  """Matthews correlation coefficient over any number of classes.

  With confusion matrix C (rows true, columns predicted), t = row sums, p =
  column sums, c = trace, s = N:
    MCC = (c s - t.p) / sqrt((s^2 - p.p) (s^2 - t.t)),
  which is the usual binary MCC for two classes.  0.0 when the denominator is
  0 (all labels or all predictions in one class).
  """
  labels, preds = _pair("labels", labels, "preds", preds)
  # Map arbitrary values (ints or strings) to dense class ids.
  classes, inv = np.unique(np.concatenate([labels, preds]),
                           return_inverse=True)
  n = labels.shape[0]
  k = classes.shape[0]
  conf = np.bincount(inv[:n] * k + inv[n:], minlength=k * k).reshape(k, k)
  conf = conf.astype(np.float64)
  t = conf.sum(axis=1)
  p = conf.sum(axis=0)
  c = np.trace(conf)
  s = float(n)
  cov_ytyp = c * s - np.dot(t, p)
  cov_ypyp = s * s - np.dot(p, p)
  cov_ytyt = s * s - np.dot(t, t)
  denom = cov_ypyp * cov_ytyt
  if denom == 0:
    return 0.0
  return float(cov_ytyp / np.sqrt(denom))


# ----------------------------------------------------------------------------
# Regression


def _float_pair(a_name: str, a, b_name: str, b):
  a, b = _pair(a_name, a, b_name, b)
  return a.astype(np.float64), b.astype(np.float64)


def _pearson_f64(x: np.ndarray, y: np.ndarray) -> float:
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
    return float("nan")
  dx = x - x.mean()
  dy = y - y.mean()
  sxx = float(np.dot(dx, dx))
  syy = float(np.dot(dy, dy))
  if sxx == 0.0 or syy == 0.0:
    return 0.0
  r = float(np.dot(dx, dy)) / np.sqrt(sxx * syy)
  return float(min(1.0, max(-1.0, r)))


def pearson(x, y) -> float:
  """Pearson correlation; 0.0 if either input is constant, NaN if non-finite."""
  x, y = _float_pair("x", x, "y", y)
  return _pearson_f64(x, y)


def rankdata(x) -> np.ndarray:
  """1-based ranks of `x`; tied values share their average rank."""
  x = _as_1d("x", x)
  _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
  # The group of the i-th distinct value occupies ranks start+1 .. start+count.
  start = np.cumsum(counts) - counts
  avg = start + (counts + 1) / 2.0
  return avg[inv].astype(np.float64)


def spearman(x, y) -> float:
  """Spearman rank correlation (average ranks for ties).

  0.0 if either input is constant, NaN if either holds NaN or inf.
  """
  x, y = _float_pair("x", x, "y", y)
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
    return float("nan")
  return _pearson_f64(rankdata(x), rankdata(y))


# ----------------------------------------------------------------------------
# By name

METRICS: dict[str, Callable[..., float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}
CLASSIFICATION_METRICS = frozenset({"accuracy", "f1", "mcc"})
REGRESSION_METRICS = frozenset({"pearson", "spearman"})


def check_metric_names(metric_names: Sequence[str]) -> None:
  """Raises UserInputError unless every name is in `METRICS`."""
  if isinstance(metric_names, str):
    metric_names = [metric_names]
  unknown = [m for m in metric_names if m not in METRICS]
  if unknown:
    raise UserInputError(
        f"unknown metric(s) {', '.join(map(repr, unknown))}; choose from "
        f"{', '.join(sorted(METRICS))}")


def compute(metric_names: Sequence[str], labels,
            predictions) -> dict[str, float]:
  """Computes the named metrics.

  Args:
    metric_names: names from `METRICS` (a single name is accepted too).
    labels: [N] gold class ids (classification) or real targets (regression).
    predictions: [N] predicted class ids, or [N, C] per-class scores (argmax
      is taken for the classification metrics); [N] or [N, 1] real values for
      pearson/spearman.

  Returns:
    {name: value} in the order given.

  Raises:
    UserInputError: an unknown metric name.
    ValueError: inputs of the wrong shape or length, or empty.
  """
  if isinstance(metric_names, str):
    metric_names = [metric_names]
  check_metric_names(metric_names)
  predictions = np.asarray(predictions)
  out = {}
  for name in metric_names:
    preds = predictions
    if (name in CLASSIFICATION_METRICS and preds.ndim == 2 and
        preds.shape[1] > 1):
      preds = np.argmax(preds, axis=-1)
    out[name] = METRICS[name](labels, preds)
  return out
