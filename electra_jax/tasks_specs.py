"""Task specs: the `TaskSpec` dataclass and the catalogue of GLUE tasks.

`GLUE_TASKS` defines the GLUE tasks in the layouts of GLUE's own download
(`glue_data/<TASK>/*.tsv`); `glue_task_name` maps GLUE's spellings ("SST-2",
"sts_b", "MNLI", ...) to its keys.

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

import dataclasses
import os

from electra_jax import task_metrics
from electra_jax.errors import UserInputError
from electra_jax.tasks_tsv import Column


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
