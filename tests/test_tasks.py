"""Tests for electra_jax.tasks (GLUE layouts, generic TSV tasks, encoding)."""

import importlib.util
import os
import pathlib

import numpy as np
import pytest

from electra_jax import tasks
from electra_jax import tokenization
from electra_jax.errors import UserInputError

SHARED_TASKS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "tasks"


def _write(path, lines):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join("\t".join(r) + "\n" for r in lines),
                  encoding="utf-8")


def _labels(examples):
  return [e.label for e in examples]


# ----------------------------------------------------------------------------
# GLUE layouts, written as GLUE's download lays them out.


def test_cola_headerless_train_dev_and_headed_test(tmp_path):
  d = tmp_path / "CoLA"
  _write(d / "train.tsv", [
      ("gj04", "1", "", "Our friends won't buy this analysis."),
      ("gj04", "0", "*", 'He said "what" the.'),
      ("cj99", "1", "", "The more you eat, the fatter you get."),
  ])
  _write(d / "dev.tsv", [("gj04", "0", "*", "Fred whistled a the.")])
  _write(d / "test.tsv", [("index", "sentence"), ("0", "Bill left."),
                          ("1", "'Quote' \"me\"")])
  spec = tasks.GLUE_TASKS["cola"]
  train = tasks.read_examples(spec, str(d), "train")
  assert _labels(train) == [1, 0, 1]
  assert [e.guid for e in train] == ["0", "1", "2"]
  # Quotes are text, not CSV quoting.
  assert train[1].text_a == 'He said "what" the.'
  assert train[0].text_b is None
  assert _labels(tasks.read_examples(spec, str(d), "dev")) == [0]
  test = tasks.read_examples(spec, str(d), "test")
  assert [(e.guid, e.text_a, e.label) for e in test] == [
      ("0", "Bill left.", None), ("1", "'Quote' \"me\"", None)]
  assert spec.metrics == ("mcc",)


def test_sst2(tmp_path):
  _write(tmp_path / "train.tsv", [("sentence", "label"), ("a gem ", "1"),
                                  ("dull", "0")])
  _write(tmp_path / "test.tsv", [("index", "sentence"), ("7", "fine")])
  spec = tasks.get_task("SST-2")
  assert spec is tasks.GLUE_TASKS["sst2"]
  train = tasks.read_examples(spec, str(tmp_path), "train")
  assert [(e.text_a, e.label) for e in train] == [("a gem ", 1), ("dull", 0)]
  test = tasks.read_examples(spec, str(tmp_path), "test")
  assert [(e.guid, e.text_a, e.label) for e in test] == [("7", "fine", None)]


MRPC_HEADER = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")


def test_mrpc_train_and_both_test_layouts(tmp_path):
  _write(tmp_path / "train.tsv", [
      MRPC_HEADER, ("1", "702876", "702977", "Amrozi accused.", "Referring."),
      ("0", "2108705", "2108831", "Yucaipa owned.", "Yucaipa bought.")])
  # GLUE's download script puts the row index where Quality was.
  _write(tmp_path / "test.tsv", [
      ("index",) + MRPC_HEADER[1:], ("0", "1", "2", "A.", "B."),
      ("1", "3", "4", "C.", "D.")])
  spec = tasks.GLUE_TASKS["mrpc"]
  train = tasks.read_examples(spec, str(tmp_path), "train")
  assert [(e.text_a, e.text_b, e.label) for e in train] == [
      ("Amrozi accused.", "Referring.", 1),
      ("Yucaipa owned.", "Yucaipa bought.", 0)]
  test = tasks.read_examples(spec, str(tmp_path), "test")
  assert [(e.guid, e.text_a, e.text_b, e.label) for e in test] == [
      ("0", "A.", "B.", None), ("1", "C.", "D.", None)]
  # A test file that kept Quality (the original MSR layout) keeps its labels.
  _write(tmp_path / "test.tsv", [MRPC_HEADER, ("1", "1", "2", "A.", "B.")])
  test = tasks.read_examples(spec, str(tmp_path), "test")
  assert [(e.guid, e.label) for e in test] == [("0", 1)]
  assert spec.metrics == ("f1", "accuracy")


STSB_HEADER = ("index", "genre", "filename", "year", "old_index", "source1",
               "source2", "sentence1", "sentence2")


def test_stsb_regression(tmp_path):
  _write(tmp_path / "dev.tsv", [
      STSB_HEADER + ("score",),
      ("0", "main-captions", "MSRvid", "2012test", "0000", "none", "none",
       "A man with a hard hat is dancing.", "A man wearing a hard hat.",
       "5.000"),
      ("1", "main-captions", "MSRvid", "2012test", "0002", "none", "none",
       "A young child.", "A child.", "4.750")])
  _write(tmp_path / "test.tsv", [
      STSB_HEADER, ("0", "main-captions", "MSRvid", "2012test", "0024", "none",
                    "none", "A girl is styling her hair.", "A girl.")])
  spec = tasks.GLUE_TASKS["stsb"]
  dev = tasks.read_examples(spec, str(tmp_path), "dev")
  assert _labels(dev) == [5.0, 4.75]
  assert all(isinstance(l, float) for l in _labels(dev))
  assert dev[1].text_b == "A child."
  test = tasks.read_examples(spec, str(tmp_path), "test")
  assert test[0].label is None and test[0].text_a.startswith("A girl is")
  assert spec.is_regression and spec.num_labels == 1
  assert spec.metrics[0] == "spearman"


QQP_HEADER = ("id", "qid1", "qid2", "question1", "question2", "is_duplicate")


def test_qqp_skips_malformed_rows(tmp_path):
  rows = [QQP_HEADER]
  for i in range(6):
    rows.append((str(100 + i), str(2 * i), str(2 * i + 1), f"q{i}a?",
                 f"q{i}b?", str(i % 2)))
  # A question split by a newline: two short rows, both malformed.
  rows.insert(3, ("201", "9", "10", "How do I"))
  rows.insert(4, ("learn?", "1"))
  _write(tmp_path / "train.tsv", rows)
  spec = tasks.GLUE_TASKS["qqp"]
  data = tasks.read_split(spec, str(tmp_path), "train")
  assert data.num_skipped == 2
  assert data.skipped_lines == (4, 5)
  assert [e.guid for e in data.examples] == [str(100 + i) for i in range(6)]
  assert _labels(data.examples) == [0, 1, 0, 1, 0, 1]
  _write(tmp_path / "test.tsv", [("id", "question1", "question2"),
                                 ("0", "Why?", "Why not?")])
  test = tasks.read_examples(spec, str(tmp_path), "test")
  assert [(e.guid, e.text_a, e.text_b, e.label) for e in test] == [
      ("0", "Why?", "Why not?", None)]


def test_mostly_malformed_file_is_an_error(tmp_path):
  _write(tmp_path / "train.tsv", [QQP_HEADER, ("1", "2", "3", "a", "b", "0"),
                                  ("x", "y"), ("x", "y")])
  with pytest.raises(UserInputError, match=r"2 of 3 rows .*line 3"):
    tasks.read_examples(tasks.GLUE_TASKS["qqp"], str(tmp_path), "train")


MNLI_HEADER = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse",
               "sentence2_binary_parse", "sentence1_parse", "sentence2_parse",
               "sentence1", "sentence2")


def _mnli_row(i, s1, s2, labels=()):
  return (str(i), "31193", "31193n", "government", "( ( x ) )", "( y )",
          "(ROOT (S x))", "(ROOT (S y))", s1, s2) + tuple(labels)


def test_mnli_matched_and_mismatched(tmp_path):
  _write(tmp_path / "train.tsv", [
      MNLI_HEADER + ("label1", "gold_label"),
      _mnli_row(0, "P0", "H0", ("neutral", "neutral")),
      _mnli_row(1, "P1", "H1", ("entailment", "entailment")),
      _mnli_row(2, "P2", "H2", ("contradiction", "contradiction"))])
  dev_header = MNLI_HEADER + tuple(f"label{i}" for i in range(1, 6)) + (
      "gold_label",)
  for name, gold in (("dev_matched", "entailment"),
                     ("dev_mismatched", "contradiction")):
    _write(tmp_path / f"{name}.tsv", [
        dev_header, _mnli_row(5, "P", "H", ("neutral",) * 5 + (gold,))])
  for name in ("test_matched", "test_mismatched"):
    _write(tmp_path / f"{name}.tsv", [MNLI_HEADER, _mnli_row(9, "TP", "TH")])
  spec = tasks.get_task("MNLI")
  assert spec.dev_splits == ("dev_matched", "dev_mismatched")
  assert spec.test_splits == ("test_matched", "test_mismatched")
  assert spec.label_list == ("contradiction", "entailment", "neutral")
  train = tasks.read_examples(spec, str(tmp_path), "train")
  assert [(e.text_a, e.text_b, e.label) for e in train] == [
      ("P0", "H0", 2), ("P1", "H1", 1), ("P2", "H2", 0)]
  assert _labels(tasks.read_examples(spec, str(tmp_path), "dev_matched")) == [1]
  assert _labels(tasks.read_examples(spec, str(tmp_path),
                                     "dev_mismatched")) == [0]
  test = tasks.read_examples(spec, str(tmp_path), "test_mismatched")
  assert [(e.guid, e.text_a, e.label) for e in test] == [("9", "TP", None)]
  with pytest.raises(UserInputError, match="dev_matched, dev_mismatched"):
    tasks.read_examples(spec, str(tmp_path), "dev")


@pytest.mark.parametrize("task,columns", [
    ("qnli", ("question", "sentence")), ("rte", ("sentence1", "sentence2"))])
def test_qnli_rte(tmp_path, task, columns):
  _write(tmp_path / "dev.tsv", [
      ("index",) + columns + ("label",), ("0", "A?", "B.", "not_entailment"),
      ("1", "C?", "D.", "entailment")])
  _write(tmp_path / "test.tsv", [("index",) + columns, ("0", "E?", "F.")])
  spec = tasks.GLUE_TASKS[task]
  dev = tasks.read_examples(spec, str(tmp_path), "dev")
  assert [(e.text_a, e.text_b, e.label) for e in dev] == [
      ("A?", "B.", 1), ("C?", "D.", 0)]
  assert tasks.read_examples(spec, str(tmp_path), "test")[0].label is None


def test_unknown_label_names_file_line_and_label(tmp_path):
  _write(tmp_path / "dev.tsv", [("index", "sentence1", "sentence2", "label"),
                                ("0", "a", "b", "entailment"),
                                ("1", "c", "d", "maybe")])
  path = os.path.join(str(tmp_path), "dev.tsv")
  with pytest.raises(UserInputError,
                     match=f"{path} line 3: unknown label 'maybe'"):
    tasks.read_examples(tasks.GLUE_TASKS["rte"], str(tmp_path), "dev")


def test_missing_file_and_column_errors(tmp_path):
  with pytest.raises(UserInputError, match=r"train\.tsv not found.*CoLA.*"
                     r"WITHOUT header"):
    tasks.read_examples(tasks.GLUE_TASKS["cola"], str(tmp_path), "train")
  _write(tmp_path / "train.tsv", [("text", "label"), ("x", "1")])
  with pytest.raises(UserInputError,
                     match=r"no text_a column 'sentence' \(its columns are "
                     r"text, label\)"):
    tasks.read_examples(tasks.GLUE_TASKS["sst2"], str(tmp_path), "train")
  with pytest.raises(UserInputError, match="no split 'valid'"):
    tasks.read_examples(tasks.GLUE_TASKS["sst2"], str(tmp_path), "valid")
  with pytest.raises(UserInputError, match="unknown task 'nope'"):
    tasks.get_task("nope")


# ----------------------------------------------------------------------------
# Generic tasks


@pytest.mark.parametrize("name,num_classes,sizes,pair", [
    ("verse_para", 2, (20000, 2624, 3720), True),
    ("sotu_party", 2, (10103, 1312, 1196), False),
    ("austen_book", 6, (7526, 940, 941), False),
])
def test_shared_tasks(name, num_classes, sizes, pair):
  d = SHARED_TASKS / name
  if not d.exists():
    pytest.skip(f"{d} not available")
  spec = tasks.tsv_task(name, str(d))
  assert spec.num_labels == num_classes
  assert spec.is_pair == pair
  got = []
  for split in ("train", "dev", "test"):
    data = tasks.read_split(spec, str(d), split)
    assert data.num_skipped == 0
    got.append(len(data.examples))
    # The shared test files carry labels.
    assert all(e.label is not None for e in data.examples)
    counts = np.bincount(_labels(data.examples), minlength=num_classes)
    assert counts.shape == (num_classes,)
  assert tuple(got) == sizes
  if name == "austen_book":
    assert spec.label_list == ("Emma", "Mansfield Park", "Northanger Abbey",
                               "Persuasion", "Pride And Prejudice",
                               "Sense And Sensibility")
    assert spec.metrics == ("accuracy", "mcc")
  else:
    assert spec.label_list == ("0", "1")
    assert spec.metrics[:2] == ("accuracy", "f1")


def test_tsv_task_numeric_labels_and_explicit_columns(tmp_path):
  _write(tmp_path / "train.tsv", [("id", "txt", "y"), ("a", "one", "10"),
                                  ("b", "two", "2"), ("c", "three", "1.5"),
                                  ("d", "four", "2")])
  _write(tmp_path / "dev.tsv", [("id", "txt", "y"), ("e", "five", "10")])
  spec = tasks.tsv_task("nums", str(tmp_path), text_a="txt", label="y")
  assert spec.label_list == ("1.5", "2", "10")  # numeric, not string, order
  assert _labels(tasks.read_examples(spec, str(tmp_path), "train")) == [
      2, 1, 0, 1]
  assert _labels(tasks.read_examples(spec, str(tmp_path), "dev")) == [2]
  reg = tasks.tsv_task("reg", str(tmp_path), text_a="txt", label="y",
                       is_regression=True)
  assert reg.metrics == ("spearman", "pearson")
  assert _labels(tasks.read_examples(reg, str(tmp_path), "train")) == [
      10.0, 2.0, 1.5, 2.0]
  # A header it cannot infer from needs explicit columns.
  with pytest.raises(UserInputError, match="cannot infer the layout"):
    tasks.tsv_task("nums", str(tmp_path))
  with pytest.raises(UserInputError, match=r"train\.tsv not found"):
    tasks.tsv_task("none", str(tmp_path / "nowhere"))


def test_tsv_task_headerless_positional(tmp_path):
  _write(tmp_path / "train.tsv", [("x", "first", "second", "pos"),
                                  ("y", "third", "fourth", "neg")])
  spec = tasks.tsv_task("pos", str(tmp_path), text_a=1, text_b=2, label=3,
                        has_header=False)
  assert spec.label_list == ("neg", "pos")
  train = tasks.read_examples(spec, str(tmp_path), "train")
  assert [(e.text_a, e.text_b, e.label) for e in train] == [
      ("first", "second", 1), ("third", "fourth", 0)]


# ----------------------------------------------------------------------------
# Encoding

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
    f"w{i}" for i in range(10)]


@pytest.fixture(name="wordpiece")
def fixture_wordpiece(tmp_path):
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
  return tokenization.load_tokenizer(str(path))


def _w(*nums):
  return " ".join(f"w{n}" for n in nums)


def test_encode_truncates_longer_text_first(wordpiece):
  # Word wK has id K + 5; [PAD]=0 [CLS]=2 [SEP]=3.
  examples = [
      # 5 + 3 tokens, room for 5: A 5->4->3, then a tie (3, 3) cuts B to 2.
      tasks.Example("0", _w(0, 1, 2, 3, 4), _w(5, 6, 7), 1),
      # Short pair: padded.
      tasks.Example("1", _w(8), _w(9), 0),
      # 1 + 7 tokens: only B is cut (to 4).
      tasks.Example("2", _w(0), _w(1, 2, 3, 4, 5, 6, 7), None),
  ]
  out = tasks.encode_examples(examples, wordpiece, max_seq_length=8)
  assert set(out) == {"input_ids", "input_mask", "segment_ids", "labels"}
  for k in ("input_ids", "input_mask", "segment_ids", "labels"):
    assert out[k].dtype == np.int32
  np.testing.assert_array_equal(out["input_ids"], [
      [2, 5, 6, 7, 3, 10, 11, 3],
      [2, 13, 3, 14, 3, 0, 0, 0],
      [2, 5, 3, 6, 7, 8, 9, 3]])
  np.testing.assert_array_equal(out["segment_ids"], [
      [0, 0, 0, 0, 0, 1, 1, 1],
      [0, 0, 0, 1, 1, 0, 0, 0],
      [0, 0, 0, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(out["input_mask"], [
      [1] * 8, [1, 1, 1, 1, 1, 0, 0, 0], [1] * 8])
  np.testing.assert_array_equal(out["labels"], [1, 0, -1])


def test_encode_single_and_regression(wordpiece):
  examples = [tasks.Example("0", _w(0, 1, 2, 3, 4, 5, 6), None, 2.5),
              tasks.Example("1", "", None, None)]
  out = tasks.encode_examples(examples, wordpiece, max_seq_length=6)
  np.testing.assert_array_equal(out["input_ids"], [[2, 5, 6, 7, 8, 3],
                                                   [2, 3, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["segment_ids"], np.zeros((2, 6)))
  np.testing.assert_array_equal(out["input_mask"][1], [1, 1, 0, 0, 0, 0])
  assert out["labels"].dtype == np.float32
  assert out["labels"][0] == 2.5 and np.isnan(out["labels"][1])
  with pytest.raises(UserInputError, match="max_seq_length"):
    tasks.encode_examples(examples, wordpiece, max_seq_length=2)


def test_encode_shared_pairs_with_sentencepiece(tmp_path):
  d = SHARED_TASKS / "verse_para"
  if not d.exists():
    pytest.skip(f"{d} not available")
  from electra_jax.data import vocab  # pylint: disable=g-import-not-at-top
  spec = tasks.tsv_task("verse_para", str(d))
  dev = tasks.read_examples(spec, str(d), "dev")[:64]
  text = tmp_path / "text.txt"
  text.write_text("\n".join(e.text_a + "\n" + e.text_b for e in dev),
                  encoding="utf-8")
  tok = tokenization.load_tokenizer(
      vocab.train_vocab(str(text), str(tmp_path / "vocab"), vocab_size=300))
  out = tasks.encode_examples(dev, tok, max_seq_length=32)
  ids, mask, seg = out["input_ids"], out["input_mask"], out["segment_ids"]
  assert ids.shape == (64, 32)
  assert np.all(ids[:, 0] == tok.cls_id)
  assert np.all((ids == tok.sep_id).sum(1) == 2)
  np.testing.assert_array_equal(ids == tok.pad_id, mask == 0)
  for i, e in enumerate(dev):
    a, b = tok.encode(e.text_a), tok.encode(e.text_b)
    n = int(mask[i].sum())
    na = int(n - seg[i].sum()) - 2  # [CLS] A [SEP]
    assert n == min(32, len(a) + len(b) + 3)
    assert list(ids[i, 1:1 + na]) == a[:na]
    assert list(ids[i, na + 2:n - 1]) == b[:n - na - 3]
  np.testing.assert_array_equal(out["labels"], _labels(dev))


# ----------------------------------------------------------------------------
# Prediction files


def _read(path):
  return pathlib.Path(path).read_text(encoding="utf-8")


def test_write_glue_predictions(tmp_path):
  out = tmp_path / "submission"
  path = tasks.write_glue_predictions("cola", ["0", "1", "2"], [1, 0, 1],
                                      str(out))
  assert path == str(out / "CoLA.tsv")
  assert _read(path) == "index\tprediction\n0\t1\n1\t0\n2\t1\n"
  # MNLI: one file per test split, label names, logits accepted.
  logits = np.array([[0.1, 2.0, 0.0], [3.0, 0.0, 0.0]])
  path = tasks.write_glue_predictions("mnli", [5, 6], logits, str(out),
                                      split="test_mismatched")
  assert os.path.basename(path) == "MNLI-mm.tsv"
  assert _read(path) == ("index\tprediction\n5\tentailment\n"
                         "6\tcontradiction\n")
  path = tasks.write_glue_predictions(tasks.GLUE_TASKS["mnli"], [0], [2],
                                      str(out), split="test_matched")
  assert _read(path).endswith("0\tneutral\n")
  assert os.path.basename(path) == "MNLI-m.tsv"
  with pytest.raises(UserInputError, match="test_matched, test_mismatched"):
    tasks.write_glue_predictions("mnli", [0], [2], str(out))
  # STS-B: clipped to [0, 5].
  path = tasks.write_glue_predictions("STS-B", [0, 1, 2], [-0.4, 2.25, 5.7],
                                      str(out))
  assert _read(path) == "index\tprediction\n0\t0.000\n1\t2.250\n2\t5.000\n"
  for task, name, label in (("sst2", "SST-2.tsv", "1"),
                            ("mrpc", "MRPC.tsv", "1"),
                            ("qqp", "QQP.tsv", "1"),
                            ("qnli", "QNLI.tsv", "not_entailment"),
                            ("rte", "RTE.tsv", "not_entailment")):
    path = tasks.write_glue_predictions(task, [3], [1], str(out))
    assert os.path.basename(path) == name
    assert _read(path) == f"index\tprediction\n3\t{label}\n"
  # Nothing half-written is left behind.
  assert sorted(os.listdir(out)) == sorted([
      "CoLA.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "STS-B.tsv", "SST-2.tsv",
      "MRPC.tsv", "QQP.tsv", "QNLI.tsv", "RTE.tsv"])
  with pytest.raises(ValueError, match=r"class ids must be in \[0, 2\)"):
    tasks.write_glue_predictions("rte", [0], [2], str(out))
  with pytest.raises(ValueError, match="1 ids but 2 predictions"):
    tasks.write_glue_predictions("rte", [0], [0, 1], str(out))


def test_round_trip_test_ids_to_submission(tmp_path):
  _write(tmp_path / "test.tsv", [("index", "sentence1", "sentence2"),
                                 ("0", "a", "b"), ("1", "c", "d")])
  spec = tasks.GLUE_TASKS["rte"]
  test = tasks.read_examples(spec, str(tmp_path), "test")
  path = tasks.write_glue_predictions(spec, [e.guid for e in test], [0, 1],
                                      str(tmp_path / "out"))
  assert _read(path) == ("index\tprediction\n0\tentailment\n"
                         "1\tnot_entailment\n")


def test_generic_task_predictions(tmp_path):
  spec = tasks.TaskSpec(name="books", text_a="sentence", text_b=None,
                        label="label", label_list=["Emma", "Persuasion"])
  assert spec.label_list == ("Emma", "Persuasion")
  path = tasks.write_predictions(spec, ["a", "b"], [1, 0],
                                 str(tmp_path / "p.tsv"))
  assert _read(path) == "index\tprediction\na\tPersuasion\nb\tEmma\n"
  with pytest.raises(UserInputError, match="not a GLUE task"):
    tasks.write_glue_predictions(spec, ["a"], [1], str(tmp_path))


def test_tfds_needs_tensorflow():
  if importlib.util.find_spec("tensorflow") is not None:
    pytest.skip("TensorFlow is installed; the tfds path would download GLUE")
  with pytest.raises(UserInputError, match="install tensorflow.*TSV"):
    tasks.read_tfds_examples(tasks.GLUE_TASKS["rte"], "dev")
