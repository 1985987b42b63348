"""Fine-tuning tasks: GLUE task definitions, TSV readers, encoding, submissions.

A task is a `TaskSpec`: which columns hold the text(s) and the label, the
label vocabulary (or regression), the metrics (the first is the main score)
and the files of each split.  `GLUE_TASKS` defines the GLUE tasks in the
layouts of GLUE's own download (`glue_data/<TASK>/*.tsv`); `tsv_task` builds a
spec for any other TSV task from its header.

  spec = get_task("mrpc")                       # or tsv_task("mine", data_dir)
  train = read_examples(spec, data_dir, "train")  # list[Example]
  for split in spec.dev_splits:                 # MNLI: dev_matched, ...
    dev = read_examples(spec, data_dir, split)
  features = encode_examples(train, tokenizer, max_seq_length=128)
  write_glue_predictions(spec, ids, preds, out_dir, split="test")

Reading rules (all files are UTF-8, tab-separated, and read with
`csv.QUOTE_NONE`: GLUE text contains quote characters that are part of the
text):
  * Columns named by a string are looked up in the file's header row;
    headerless files (CoLA's train/dev) name their columns in
    `TaskSpec.column_names`.  Integer column references are positions.
  * Blank lines are ignored.  A row whose column count differs from the
    header's is skipped and counted (QQP has a few such rows); the count is
    logged and returned by `read_split`.  When more rows are bad than good
    the file is taken to be in the wrong layout: UserInputError.
  * A label outside `label_list` (any split) is a UserInputError naming the
    file, the line and the label.
  * Example ids (`Example.guid`) are the file's id column (GLUE's `index`, or
    `id` for QQP) where the file has one, else the 0-based data row number
    (GLUE's MRPC test ids are those row numbers too).  Test-file ids are what
    `write_glue_predictions` expects.

This module is the entry point: it reads splits into `Example`s, builds
generic TSV tasks and encodes examples.  The pieces behind it (all names
above are importable from here):
  tasks_specs        `TaskSpec`, `GLUE_TASKS` (with GLUE's file layouts),
                     `glue_task_name`
  tasks_tsv          reading TSV files: rows, columns, label sets
  tasks_predictions  prediction files and GLUE submissions
"""

import dataclasses
import importlib.util
import os
from typing import Sequence

from etils import epath
import numpy as np

from electra_jax.errors import UserInputError
from electra_jax.tasks_predictions import prediction_strings
from electra_jax.tasks_predictions import write_glue_predictions
from electra_jax.tasks_predictions import write_predictions
from electra_jax.tasks_specs import GLUE_TASKS
from electra_jax.tasks_specs import TaskSpec
from electra_jax.tasks_specs import glue_task_name
from electra_jax.tasks_tsv import Column
from electra_jax.tasks_tsv import column_index
from electra_jax.tasks_tsv import read_table
from electra_jax.tasks_tsv import sorted_labels

__all__ = [
    "Column", "Example", "GLUE_TASKS", "SplitData", "TaskSpec",
    "encode_examples", "get_task", "glue_task_name", "prediction_strings",
    "read_examples", "read_split", "read_tfds_examples", "tsv_task",
    "write_glue_predictions", "write_predictions",
]


# ----------------------------------------------------------------------------
# Task lookup


def get_task(name: str, data_dir: str | None = None, **tsv_args) -> TaskSpec:
  """A GLUE task by name, else a generic `tsv_task(name, data_dir, ...)`."""
  key = glue_task_name(name)
  if key is not None and not tsv_args:
    return GLUE_TASKS[key]
  if data_dir is None:
    raise UserInputError(
        f"unknown task {name!r}: the GLUE tasks are {', '.join(GLUE_TASKS)}; "
        f"for another task pass its data directory (train.tsv, dev.tsv, "
        f"test.tsv)")
  return tsv_task(name, data_dir, **tsv_args)


# ----------------------------------------------------------------------------
# TSV reading


@dataclasses.dataclass(frozen=True)
class Example:
  """One example: `label` is a class id, a float (regression) or None."""
  guid: str
  text_a: str
  text_b: str | None
  label: int | float | None


@dataclasses.dataclass(frozen=True)
class SplitData:
  """The examples of one split and what reading them skipped."""
  examples: list[Example]
  path: str
  skipped_lines: tuple[int, ...]  # 1-based line numbers of malformed rows

  @property
  def num_skipped(self) -> int:
    return len(self.skipped_lines)


def read_split(spec: TaskSpec, data_dir: str, split: str) -> SplitData:
  """Reads one split's examples; see `read_examples`."""
  file_name = spec.split_file(split)
  path = os.path.join(os.fspath(data_dir), file_name)
  is_test = spec.is_test_split(split)
  has_header = spec.test_header if is_test else spec.train_dev_header
  names_hint = None if has_header else spec.column_names
  # Columns given by position that every data row must have.
  needed = [spec.text_a, spec.text_b, spec.id_column]
  if not is_test or spec.test_has_labels:
    needed.append(spec.label)
  min_columns = 1 + max([c for c in needed if isinstance(c, int)] or [0])
  table = read_table(
      path, has_header, spec.layout,
      expected_columns=(len(names_hint) if names_hint is not None else None),
      min_columns=min_columns)
  names = table.header if has_header else names_hint
  a_idx = column_index(spec.text_a, names, path, "text_a", spec.layout)
  b_idx = (None if spec.text_b is None else
           column_index(spec.text_b, names, path, "text_b", spec.layout))
  if is_test and not spec.test_has_labels:
    labelled = (names is not None and isinstance(spec.label, str) and
                spec.label in names)
  else:
    labelled = True
  label_idx = (column_index(spec.label, names, path, "label", spec.layout)
               if labelled else None)
  id_idx = None
  if spec.id_column is not None:
    if isinstance(spec.id_column, int):
      id_idx = spec.id_column
    elif names is not None and spec.id_column in names:
      id_idx = list(names).index(spec.id_column)
  width = max(i for i in (a_idx, b_idx, label_idx, id_idx) if i is not None)
  label_ids = ({l: i for i, l in enumerate(spec.label_list)}
               if spec.label_list is not None else None)

  if names is not None and width >= len(names):
    raise UserInputError(
        f"task file {path} has {len(names)} columns ({', '.join(names)}) but "
        f"task {spec.name} reads column position {width}")

  examples = []
  for row_num, (row, line) in enumerate(zip(table.rows, table.line_numbers)):
    guid = row[id_idx].strip() if id_idx is not None else str(row_num)
    label = None
    if label_idx is not None:
      raw = row[label_idx].strip()
      if spec.is_regression:
        try:
          label = float(raw)
        except ValueError:
          raise UserInputError(
              f"task file {path} line {line}: label {raw!r} is not a number "
              f"(task {spec.name} is a regression task)") from None
      else:
        label = label_ids.get(raw)
        if label is None:
          raise UserInputError(
              f"task file {path} line {line}: unknown label {raw!r} (task "
              f"{spec.name} has labels {', '.join(spec.label_list)})")
    examples.append(Example(
        guid=guid, text_a=row[a_idx],
        text_b=row[b_idx] if b_idx is not None else None, label=label))
  return SplitData(examples, path, tuple(table.skipped_lines))


def read_examples(spec: TaskSpec, data_dir: str, split: str) -> list[Example]:
  """Reads the examples of one split of a task from its TSV file.

  Args:
    spec: the task.
    data_dir: directory holding the task's files (local or gs://).
    split: "train", one of `spec.dev_splits` / `spec.test_splits` ("dev",
      "test", or MNLI's "dev_matched", "test_mismatched", ...).

  Returns:
    The examples in file order.  Labels are class ids into `spec.label_list`,
    floats for regression, or None for unlabelled test files.  Malformed rows
    are skipped and logged (see `read_split` for their count).

  Raises:
    UserInputError: missing file (naming the expected layout), missing
      column, unknown label (file, line, label), or a file whose rows are
      mostly malformed.
  """
  return read_split(spec, data_dir, split).examples


# ----------------------------------------------------------------------------
# Generic TSV tasks


def tsv_task(name: str, data_dir: str, *, text_a: Column | None = None,
             text_b: Column | None = None, label: Column | None = None,
             is_regression: bool = False,
             label_list: Sequence[str] | None = None,
             metrics: Sequence[str] | None = None,
             has_header: bool = True) -> TaskSpec:
  """A spec for a task in DATA_DIR/{train,dev,test}.tsv.

  Without `text_a` the layout is inferred from train.tsv's header:
    sentence, label                       -> single sentence (SST-2 layout)
    Quality, #1 String, #2 String          -> pair (MRPC layout)
    sentence1, sentence2, label            -> pair (RTE layout)
  Otherwise the given columns are used (names, or 0-based positions for
  files without a header; `label` defaults to "label").

  Labels may be strings or numbers with any number of classes: unless given,
  `label_list` is the sorted set of train labels (numeric order when they are
  all numbers).  Default metrics: accuracy, f1, mcc for two classes (f1 of
  label_list[1]); accuracy, mcc for more; spearman, pearson for regression.
  Test files are read with labels when their header has the label column.

  Raises:
    UserInputError: missing train.tsv, an unrecognised header without
      explicit columns, or fewer than two classes.
  """
  path = os.path.join(os.fspath(data_dir), "train.tsv")
  generic_layout = (f"a TSV task in {data_dir} (train.tsv, dev.tsv, test.tsv) "
                    f"with a header such as sentence<TAB>label or MRPC's "
                    f"Quality<TAB>#1 ID<TAB>#2 ID<TAB>#1 String<TAB>#2 String")
  if not epath.Path(path).exists():
    raise UserInputError(f"task file {path} not found; expected "
                         f"{generic_layout}")
  if text_a is None:
    if not has_header:
      raise UserInputError(
          f"task {name}: files without a header need explicit columns "
          f"(text_a, label, optionally text_b) as 0-based positions")
    table_head = read_table(path, True)
    header = table_head.header
    if "sentence" in header and "label" in header:
      text_a, text_b, label = "sentence", None, "label"
    elif all(c in header for c in ("Quality", "#1 String", "#2 String")):
      text_a, text_b, label = "#1 String", "#2 String", "Quality"
    elif all(c in header for c in ("sentence1", "sentence2", "label")):
      text_a, text_b, label = "sentence1", "sentence2", "label"
    else:
      raise UserInputError(
          f"task file {path}: cannot infer the layout from its header "
          f"({', '.join(header)}); expected sentence/label, MRPC's Quality/"
          f"#1 String/#2 String or sentence1/sentence2/label, or pass "
          f"text_a, text_b and label")
    table = table_head
  else:
    label = "label" if label is None else label
    table = None
  layout = (f"a TSV task with columns text_a={text_a!r}"
            + (f", text_b={text_b!r}" if text_b is not None else "")
            + f", label={label!r} in {data_dir}/train.tsv, dev.tsv, test.tsv")
  if not is_regression and label_list is None:
    if table is None:
      table = read_table(path, has_header,
                         min_columns=1 + max(
                             [c for c in (text_a, text_b, label)
                              if isinstance(c, int)] or [0]))
    idx = column_index(label, table.header, path, "label")
    label_list = sorted_labels(r[idx].strip() for r in table.rows
                               if len(r) > idx)
    if len(label_list) < 2:
      raise UserInputError(
          f"task file {path}: the label column {label!r} has "
          f"{len(label_list)} distinct value(s) {list(label_list)}; a "
          f"classification task needs at least 2 (or pass is_regression)")
  if metrics is None:
    if is_regression:
      metrics = ("spearman", "pearson")
    elif len(label_list) == 2:
      metrics = ("accuracy", "f1", "mcc")
    else:
      metrics = ("accuracy", "mcc")
  return TaskSpec(
      name=name, text_a=text_a, text_b=text_b, label=label,
      label_list=None if is_regression else tuple(label_list),
      is_regression=is_regression, metrics=tuple(metrics),
      train_dev_header=has_header, test_header=has_header, layout=layout)


# ----------------------------------------------------------------------------
# Optional: GLUE from tensorflow-datasets (needs TensorFlow)

_TFDS_TEXT_KEYS = {
    "cola": ("sentence", None), "sst2": ("sentence", None),
    "mrpc": ("sentence1", "sentence2"), "stsb": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"), "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}


def read_tfds_examples(spec: TaskSpec, split: str) -> list[Example]:
  """Reads a GLUE split from tensorflow-datasets' `glue/<task>`.

  Needs TensorFlow (tfds' GLUE is stored as TFRecord); it is optional here, so
  without it this raises UserInputError.  Splits are named as for TSV files
  ("dev" -> tfds "validation", "dev_matched" -> "validation_matched").  Class
  ids are mapped through the label names so they agree with the TSV reader
  (tfds orders MNLI's labels differently); test labels (-1) become None.
  """
  key = glue_task_name(spec.name)
  if key is None or key not in _TFDS_TEXT_KEYS:
    raise UserInputError(f"task {spec.name} is not a GLUE task in "
                         f"tensorflow-datasets; read it from TSV files")
  spec.split_file(split)  # Validates the split name.
  if importlib.util.find_spec("tensorflow") is None:
    raise UserInputError(
        "reading GLUE through tensorflow-datasets needs TensorFlow, which is "
        "not installed; `pip install tensorflow` or use the GLUE TSV files "
        "with read_examples(spec, data_dir, split)")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds_split = split.replace("dev", "validation")
  builder = tfds.builder(f"glue/{key}")
  builder.download_and_prepare()
  label_feature = builder.info.features["label"]
  names = getattr(label_feature, "names", None)
  to_ours = None
  if spec.label_list is not None and names and set(spec.label_list) <= set(
      names):
    to_ours = {i: spec.label_list.index(n) for i, n in enumerate(names)
               if n in spec.label_list}
  a_key, b_key = _TFDS_TEXT_KEYS[key]
  examples = []
  for ex in tfds.as_numpy(builder.as_dataset(split=tfds_split)):
    raw = ex["label"]
    if spec.is_regression:
      label = None if spec.is_test_split(split) else float(raw)
    elif int(raw) < 0:
      label = None
    else:
      label = to_ours[int(raw)] if to_ours is not None else int(raw)
    examples.append(Example(
        guid=str(int(ex["idx"])), text_a=ex[a_key].decode("utf-8"),
        text_b=ex[b_key].decode("utf-8") if b_key else None, label=label))
  examples.sort(key=lambda e: int(e.guid))
  return examples


# ----------------------------------------------------------------------------
# Encoding


def _truncate_pair(a: list[int], b: list[int], max_tokens: int) -> None:
  """ELECTRA/BERT rule: drop the last token of the longer list until they fit.

  On a tie the second list loses the token.
  """
  while len(a) + len(b) > max_tokens:
    if len(a) > len(b):
      a.pop()
    else:
      b.pop()


def encode_examples(examples: Sequence[Example], tokenizer,
                    max_seq_length: int,
                    is_regression: bool | None = None
                    ) -> dict[str, np.ndarray]:
  """Tokenizes examples into fixed-length model inputs.

  Layout [CLS] A [SEP] (B [SEP]) then [PAD]s; segment ids 0 for [CLS] A [SEP]
  and 1 for B [SEP].  A pair longer than the length is truncated as in the
  original ELECTRA: one token at a time from the end of the currently longer
  text (B on a tie) until it fits; a single text is cut to
  max_seq_length - 2 tokens.

  Args:
    examples: from `read_examples`; all single texts or all pairs is typical,
      but each example is encoded by whether its text_b is None.
    tokenizer: an `electra_jax.tokenization.Tokenizer`.
    max_seq_length: L, the padded length.
    is_regression: float labels (pass `spec.is_regression`); None infers it
      from the labels (any float label -> regression).

  Returns:
    input_ids, input_mask, segment_ids: int32 [N, L]; labels: [N] int32 class
    ids (-1 where the example has no label) or float32 for regression (NaN
    where unlabelled).
  """
  if max_seq_length < 3:
    raise UserInputError(f"max_seq_length must be at least 3 ([CLS] x "
                         f"[SEP]), got {max_seq_length}")
  n = len(examples)
  ids_a = tokenizer.encode_batch([e.text_a for e in examples])
  pair_idx = [i for i, e in enumerate(examples) if e.text_b is not None]
  ids_b_list = tokenizer.encode_batch([examples[i].text_b for i in pair_idx])
  ids_b = dict(zip(pair_idx, ids_b_list))
  cls, sep, pad = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id

  input_ids = np.full((n, max_seq_length), pad, dtype=np.int32)
  input_mask = np.zeros((n, max_seq_length), dtype=np.int32)
  segment_ids = np.zeros((n, max_seq_length), dtype=np.int32)
  for i in range(n):
    a = list(ids_a[i])
    if i in ids_b:
      b = list(ids_b[i])
      _truncate_pair(a, b, max_seq_length - 3)
      tokens = [cls] + a + [sep] + b + [sep]
      first = len(a) + 2
    else:
      a = a[:max_seq_length - 2]
      tokens = [cls] + a + [sep]
      first = len(tokens)
    input_ids[i, :len(tokens)] = tokens
    input_mask[i, :len(tokens)] = 1
    segment_ids[i, first:len(tokens)] = 1

  if is_regression is None:
    is_regression = any(isinstance(e.label, float) for e in examples)
  if is_regression:
    labels = np.array([np.nan if e.label is None else e.label
                       for e in examples], dtype=np.float32)
  else:
    labels = np.array([-1 if e.label is None else e.label for e in examples],
                      dtype=np.int32)
  return {"input_ids": input_ids, "input_mask": input_mask,
          "segment_ids": segment_ids, "labels": labels}
