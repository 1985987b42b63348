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

GLUE layouts (header rows; `<tab>` separated):
  CoLA   train/dev: NO header; source, label, star, sentence.
         test: index, sentence
  SST-2  train/dev: sentence, label.            test: index, sentence
  MRPC   train/dev: Quality, #1 ID, #2 ID, #1 String, #2 String.
         test: index, #1 ID, #2 ID, #1 String, #2 String (GLUE's download
         script replaces Quality with the row index; a test file that keeps
         Quality is read with its labels)
  STS-B  index, genre, filename, year, old_index, source1, source2,
         sentence1, sentence2, score (test: without score)
  QQP    id, qid1, qid2, question1, question2, is_duplicate.
         test: id, question1, question2
  MNLI   index, promptID, pairID, genre, sentence1_binary_parse,
         sentence2_binary_parse, sentence1_parse, sentence2_parse, sentence1,
         sentence2, then label1, gold_label (train) or label1..label5,
         gold_label (dev_matched/dev_mismatched); test_matched/mismatched stop
         at sentence2
  QNLI   index, question, sentence, label (test: without label)
  RTE    index, sentence1, sentence2, label (test: without label)
  WNLI   index, sentence1, sentence2, label (test: without label)
"""

import csv
import dataclasses
import importlib.util
import os
from typing import Sequence
import uuid

from absl import logging
from etils import epath
import numpy as np

from electra_jax import task_metrics
from electra_jax.errors import UserInputError

Column = str | int


# ----------------------------------------------------------------------------
# Task specs


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A sentence(-pair) classification or regression task stored as TSV files.

  Attributes:
    name: short name ("mrpc", or the user's name for a generic task).
    text_a: column of the first text (header name, or 0-based position).
    text_b: column of the second text, or None for single-sentence tasks.
    label: column of the label (name or position).
    label_list: the label strings in class-id order (class i is
      label_list[i]); None for regression.  A list is accepted and stored as a
      tuple.
    is_regression: real-valued label (STS-B); `label_list` must be None.
    metrics: names from `task_metrics.METRICS`; the first is the main score.
    train_file: file name of the training split.
    dev_files: file names of the dev split(s) (MNLI: matched, mismatched).
    test_files: file names of the test split(s).
    train_dev_header: whether train and dev files start with a header row.
    test_header: whether test files start with a header row.
    column_names: names of the columns of headerless files (CoLA), so that
      columns can still be referenced by name; None if there are none.
    test_has_labels: test files always carry labels.  Even when False, a test
      file whose header holds the (named) label column is read with labels.
    id_column: column holding the example id where a file has it (GLUE's
      "index"; QQP "id"); rows of files without it are numbered from 0.
    submission_files: GLUE server file name for each test file (e.g.
      "MNLI-m.tsv", "MNLI-mm.tsv"); empty for non-GLUE tasks.
    regression_range: (low, high) predictions are clipped to in submission
      files (STS-B: 0..5); None for no clipping.
    layout: one line describing the expected files, for error messages.
  """
  name: str
  text_a: Column
  text_b: Column | None
  label: Column
  label_list: tuple[str, ...] | None
  is_regression: bool = False
  metrics: tuple[str, ...] = ("accuracy",)
  train_file: str = "train.tsv"
  dev_files: tuple[str, ...] = ("dev.tsv",)
  test_files: tuple[str, ...] = ("test.tsv",)
  train_dev_header: bool = True
  test_header: bool = True
  column_names: tuple[str, ...] | None = None
  test_has_labels: bool = False
  id_column: Column | None = "index"
  submission_files: tuple[str, ...] = ()
  regression_range: tuple[float, float] | None = None
  layout: str = ""

  def __post_init__(self):
    for field in ("label_list", "metrics", "dev_files", "test_files",
                  "column_names", "submission_files"):
      v = getattr(self, field)
      if v is not None:
        object.__setattr__(self, field, (v,) if isinstance(v, str) else
                           tuple(v))
    if self.is_regression and self.label_list is not None:
      raise UserInputError(f"task {self.name}: a regression task takes no "
                           f"label_list (got {list(self.label_list)})")
    if not self.is_regression and not self.label_list:
      raise UserInputError(f"task {self.name}: a classification task needs a "
                           f"label_list (or is_regression=True)")
    if not self.metrics:
      raise UserInputError(f"task {self.name}: give at least one metric")
    task_metrics.check_metric_names(self.metrics)
    if self.submission_files and (len(self.submission_files) !=
                                  len(self.test_files)):
      raise UserInputError(f"task {self.name}: submission_files must match "
                           f"test_files one to one")

  @property
  def num_labels(self) -> int:
    """Number of classes (1 for regression: the model outputs one value)."""
    return 1 if self.is_regression else len(self.label_list)

  @property
  def main_metric(self) -> str:
    return self.metrics[0]

  @property
  def is_pair(self) -> bool:
    return self.text_b is not None

  @property
  def dev_splits(self) -> tuple[str, ...]:
    """Split names of the dev files ("dev", or "dev_matched", ...)."""
    return tuple(_split_name(f) for f in self.dev_files)

  @property
  def test_splits(self) -> tuple[str, ...]:
    """Split names of the test files ("test", or "test_matched", ...)."""
    return tuple(_split_name(f) for f in self.test_files)

  @property
  def splits(self) -> tuple[str, ...]:
    return ("train",) + self.dev_splits + self.test_splits

  def split_file(self, split: str) -> str:
    """The file name of `split` ("train", a dev or a test split name)."""
    files = {"train": self.train_file}
    files.update(zip(self.dev_splits, self.dev_files))
    files.update(zip(self.test_splits, self.test_files))
    if split in files:
      return files[split]
    for kind, names in (("dev", self.dev_splits), ("test", self.test_splits)):
      if split == kind and len(names) > 1:
        raise UserInputError(
            f"task {self.name} has several {kind} splits; pass one of "
            f"{', '.join(names)}")
    raise UserInputError(f"task {self.name} has no split {split!r}; choose "
                         f"from {', '.join(self.splits)}")

  def is_test_split(self, split: str) -> bool:
    return split in self.test_splits


def _split_name(file_name: str) -> str:
  base = os.path.basename(file_name)
  return base[:-4] if base.endswith(".tsv") else base


def _glue(name, text_a, text_b, label, label_list, metrics, submission,
          layout, **kw) -> TaskSpec:
  return TaskSpec(name=name, text_a=text_a, text_b=text_b, label=label,
                  label_list=label_list, metrics=metrics,
                  submission_files=submission, layout=layout, **kw)


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, TaskSpec] = {
    "cola": _glue(
        "cola", "sentence", None, "label", _BINARY, ("mcc",), ("CoLA.tsv",),
        "GLUE CoLA: train.tsv/dev.tsv WITHOUT header, columns source, label, "
        "star, sentence; test.tsv with header index, sentence",
        train_dev_header=False,
        column_names=("source", "label", "star", "sentence")),
    "sst2": _glue(
        "sst2", "sentence", None, "label", _BINARY, ("accuracy",),
        ("SST-2.tsv",),
        "GLUE SST-2: train.tsv/dev.tsv with header sentence, label; test.tsv "
        "with header index, sentence"),
    "mrpc": _glue(
        "mrpc", "#1 String", "#2 String", "Quality", _BINARY,
        ("f1", "accuracy"), ("MRPC.tsv",),
        "GLUE MRPC: train.tsv/dev.tsv with header Quality, #1 ID, #2 ID, "
        "#1 String, #2 String; test.tsv with index in place of Quality"),
    "stsb": _glue(
        "stsb", "sentence1", "sentence2", "score", None,
        ("spearman", "pearson"), ("STS-B.tsv",),
        "GLUE STS-B: header index, genre, filename, year, old_index, source1, "
        "source2, sentence1, sentence2, score (test.tsv without score)",
        is_regression=True, regression_range=(0.0, 5.0)),
    "qqp": _glue(
        "qqp", "question1", "question2", "is_duplicate", _BINARY,
        ("f1", "accuracy"), ("QQP.tsv",),
        "GLUE QQP: header id, qid1, qid2, question1, question2, is_duplicate; "
        "test.tsv with header id, question1, question2",
        id_column="id"),
    "mnli": _glue(
        "mnli", "sentence1", "sentence2", "gold_label",
        ("contradiction", "entailment", "neutral"), ("accuracy",),
        ("MNLI-m.tsv", "MNLI-mm.tsv"),
        "GLUE MNLI: train.tsv, dev_matched.tsv, dev_mismatched.tsv, "
        "test_matched.tsv, test_mismatched.tsv with header index, promptID, "
        "pairID, genre, sentence1_binary_parse, sentence2_binary_parse, "
        "sentence1_parse, sentence2_parse, sentence1, sentence2, label1.., "
        "gold_label (test files end at sentence2)",
        dev_files=("dev_matched.tsv", "dev_mismatched.tsv"),
        test_files=("test_matched.tsv", "test_mismatched.tsv")),
    "qnli": _glue(
        "qnli", "question", "sentence", "label", _NLI2, ("accuracy",),
        ("QNLI.tsv",),
        "GLUE QNLI: header index, question, sentence, label (test.tsv without "
        "label)"),
    "rte": _glue(
        "rte", "sentence1", "sentence2", "label", _NLI2, ("accuracy",),
        ("RTE.tsv",),
        "GLUE RTE: header index, sentence1, sentence2, label (test.tsv "
        "without label)"),
    "wnli": _glue(
        "wnli", "sentence1", "sentence2", "label", _BINARY, ("accuracy",),
        ("WNLI.tsv",),
        "GLUE WNLI: header index, sentence1, sentence2, label (test.tsv "
        "without label)"),
}

# GLUE's directory names (CoLA, SST-2, STS-B, ...) and other spellings.
_GLUE_ALIASES = {"sst": "sst2", "sts": "stsb", "mnlim": "mnli",
                 "mnlimm": "mnli"}


def glue_task_name(name: str) -> str | None:
  """The GLUE_TASKS key for `name` ("SST-2", "sts_b", "MNLI" ...), or None."""
  key = name.lower().replace("-", "").replace("_", "")
  key = _GLUE_ALIASES.get(key, key)
  return key if key in GLUE_TASKS else None


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


@dataclasses.dataclass
class _Table:
  path: str
  header: list[str] | None
  rows: list[list[str]]
  line_numbers: list[int]
  skipped_lines: list[int]


def _missing_file_error(path, spec: TaskSpec | None) -> UserInputError:
  hint = f"; expected {spec.layout}" if spec is not None and spec.layout else ""
  return UserInputError(f"task file {path} not found{hint}")


def _read_table(path: str, has_header: bool, spec: TaskSpec | None = None,
                expected_columns: int | None = None,
                min_columns: int = 1) -> _Table:
  """Reads a TSV file, skipping (and counting) rows of the wrong width."""
  p = epath.Path(path)
  if not p.exists():
    raise _missing_file_error(path, spec)
  if p.is_dir():
    raise UserInputError(f"task file {path} is a directory, expected a TSV "
                         f"file")
  header = None
  rows, line_numbers, skipped = [], [], []
  try:
    with p.open("r", encoding="utf-8-sig") as f:
      reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
      for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
          continue  # Blank line.
        if has_header and header is None:
          header = [c.strip() for c in row]
          expected_columns = len(header)
          continue
        if expected_columns is not None:
          ok = len(row) == expected_columns
        else:
          ok = len(row) >= min_columns
        if ok:
          rows.append(row)
          line_numbers.append(line)
        else:
          skipped.append(line)
  except UnicodeDecodeError:
    raise UserInputError(f"task file {path} is not UTF-8 text; save it as "
                         f"UTF-8") from None
  except csv.Error as e:
    raise UserInputError(f"task file {path} line {reader.line_num}: {e}"
                         ) from None
  if has_header and header is None:
    raise UserInputError(f"task file {path} is empty; expected a header row "
                         f"and data rows"
                         + (f" ({spec.layout})" if spec and spec.layout
                            else ""))
  if not rows:
    raise UserInputError(
        f"task file {path} has no usable data rows ({len(skipped)} with the "
        f"wrong number of columns)"
        + (f"; expected {spec.layout}" if spec and spec.layout else ""))
  if len(skipped) > len(rows):
    want = (f"{expected_columns} columns" if expected_columns is not None else
            f"at least {min_columns} columns")
    raise UserInputError(
        f"task file {path}: {len(skipped)} of {len(skipped) + len(rows)} rows "
        f"do not have {want} (first at line {skipped[0]}); the file is not in "
        f"the expected layout"
        + (f": {spec.layout}" if spec and spec.layout else ""))
  if skipped:
    logging.warning("%s: skipped %d malformed row(s) with the wrong number "
                    "of columns (lines %s%s)", path, len(skipped),
                    ", ".join(map(str, skipped[:10])),
                    ", ..." if len(skipped) > 10 else "")
  return _Table(str(path), header, rows, line_numbers, skipped)


def _column_index(col: Column, names: Sequence[str] | None, path: str,
                  what: str, spec: TaskSpec | None) -> int:
  if isinstance(col, int):
    return col
  if names is None:
    raise UserInputError(
        f"task file {path} has no header row, so the {what} column {col!r} "
        f"cannot be found by name; give the column as a 0-based position")
  if col not in names:
    hint = f"; expected {spec.layout}" if spec and spec.layout else ""
    raise UserInputError(
        f"task file {path} has no {what} column {col!r} (its columns are "
        f"{', '.join(names)}){hint}")
  return list(names).index(col)


def _is_number(s: str) -> bool:
  try:
    float(s)
  except ValueError:
    return False
  return True


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
  table = _read_table(
      path, has_header, spec,
      expected_columns=(len(names_hint) if names_hint is not None else None),
      min_columns=min_columns)
  names = table.header if has_header else names_hint
  a_idx = _column_index(spec.text_a, names, path, "text_a", spec)
  b_idx = (None if spec.text_b is None else
           _column_index(spec.text_b, names, path, "text_b", spec))
  if is_test and not spec.test_has_labels:
    labelled = (names is not None and isinstance(spec.label, str) and
                spec.label in names)
  else:
    labelled = True
  label_idx = (_column_index(spec.label, names, path, "label", spec)
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


def _sorted_labels(labels) -> tuple[str, ...]:
  uniq = set(labels)
  if all(_is_number(l) for l in uniq):
    return tuple(sorted(uniq, key=lambda s: (float(s), s)))
  return tuple(sorted(uniq))


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
    table_head = _read_table(path, True, None)
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
      table = _read_table(path, has_header, None,
                          min_columns=1 + max(
                              [c for c in (text_a, text_b, label)
                               if isinstance(c, int)] or [0]))
    idx = _column_index(label, table.header, path, "label", None)
    label_list = _sorted_labels(r[idx].strip() for r in table.rows
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


# ----------------------------------------------------------------------------
# Prediction files


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
