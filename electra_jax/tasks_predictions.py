"""Prediction files: predictions as label strings, GLUE-server submissions."""

import os
from typing import Sequence
import uuid

from etils import epath
import numpy as np

from electra_jax.errors import UserInputError
from electra_jax.tasks_specs import GLUE_TASKS
from electra_jax.tasks_specs import TaskSpec
from electra_jax.tasks_specs import glue_task_name


def _as_spec(task: TaskSpec | str) -> TaskSpec:
  if isinstance(task, TaskSpec):
    return task
  key = glue_task_name(task)
  if key is None:
    raise UserInputError(f"unknown GLUE task {task!r}; the GLUE tasks are "
                         f"{', '.join(GLUE_TASKS)}")
  return GLUE_TASKS[key]


def prediction_strings(task: TaskSpec | str, predictions) -> list[str]:
  """Predictions as the strings a prediction file holds.

  Classification: class ids [N] (or per-class scores [N, C], argmax taken) ->
  label strings ("0"/"1" for CoLA, SST-2, MRPC, QQP; label names for MNLI,
  QNLI, RTE).  Regression: [N] or [N, 1] floats, clipped to the task's
  `regression_range` (STS-B 0..5), written with 3 decimals.
  """
  spec = _as_spec(task)
  preds = np.asarray(predictions)
  if spec.is_regression:
    if preds.ndim == 2 and preds.shape[1] == 1:
      preds = preds[:, 0]
    if preds.ndim != 1:
      raise ValueError(f"regression predictions must be [N], got shape "
                       f"{preds.shape}")
    preds = preds.astype(np.float64)
    if not np.all(np.isfinite(preds)):
      raise ValueError("regression predictions contain NaN or inf")
    if spec.regression_range is not None:
      preds = np.clip(preds, *spec.regression_range)
    return [f"{v:.3f}" for v in preds]
  if preds.ndim == 2:
    preds = np.argmax(preds, axis=-1)
  if preds.ndim != 1:
    raise ValueError(f"class predictions must be [N] ids or [N, C] scores, "
                     f"got shape {preds.shape}")
  if preds.size and (not np.issubdtype(preds.dtype, np.integer)):
    if np.any(preds != np.round(preds)):
      raise ValueError("class predictions must be integer class ids")
  preds = preds.astype(np.int64)
  k = len(spec.label_list)
  if preds.size and (preds.min() < 0 or preds.max() >= k):
    raise ValueError(f"class ids must be in [0, {k}) for task {spec.name}, "
                     f"got {preds.min()}..{preds.max()}")
  return [spec.label_list[p] for p in preds]


def write_predictions(task: TaskSpec | str, ids: Sequence, predictions,
                      path: str) -> str:
  """Writes "index<TAB>prediction" rows (with that header) to `path`.

  The file is written under a temporary name beside `path` and renamed when
  complete.  See `prediction_strings` for the prediction formats.
  """
  spec = _as_spec(task)
  ids = list(ids)
  strings = prediction_strings(spec, predictions)
  if len(ids) != len(strings):
    raise ValueError(f"{len(ids)} ids but {len(strings)} predictions")
  out = epath.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
  text = "index\tprediction\n" + "".join(
      f"{i}\t{s}\n" for i, s in zip(ids, strings))
  try:
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
  finally:
    if tmp.exists():
      tmp.unlink()
  return str(out)


def write_glue_predictions(task: TaskSpec | str, ids: Sequence, predictions,
                           output_dir: str, split: str | None = None) -> str:
  """Writes a GLUE-server prediction file into `output_dir`.

  Args:
    task: a GLUE task name or spec ("cola", "MNLI", ...).
    ids: the test examples' ids (`Example.guid` of the test split).
    predictions: class ids / scores or regression values, one per id.
    output_dir: directory of the submission (created if needed).
    split: the test split; needed for MNLI ("test_matched" -> MNLI-m.tsv,
      "test_mismatched" -> MNLI-mm.tsv), optional elsewhere.

  Returns:
    The written file's path (CoLA.tsv, SST-2.tsv, MRPC.tsv, STS-B.tsv,
    QQP.tsv, MNLI-m.tsv, MNLI-mm.tsv, QNLI.tsv, RTE.tsv, WNLI.tsv).
  """
  spec = _as_spec(task)
  if not spec.submission_files:
    raise UserInputError(f"task {spec.name} is not a GLUE task; use "
                         f"write_predictions(task, ids, predictions, path)")
  if split is None:
    if len(spec.test_splits) > 1:
      raise UserInputError(f"task {spec.name} has several test splits; pass "
                           f"split= one of {', '.join(spec.test_splits)}")
    split = spec.test_splits[0]
  if split not in spec.test_splits:
    raise UserInputError(f"GLUE submissions are for test splits; task "
                         f"{spec.name} has {', '.join(spec.test_splits)}, "
                         f"not {split!r}")
  name = spec.submission_files[spec.test_splits.index(split)]
  return write_predictions(spec, ids, predictions,
                           os.path.join(os.fspath(output_dir), name))
