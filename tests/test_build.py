"""Tests for electra_jax.data.build and electra_jax.data.dataset."""

import os
import re
import subprocess
import sys
import threading

from etils import epath
import numpy as np
import pytest
import tensorflow_datasets as tfds

from electra_jax import tokenization
from electra_jax.data import build
from electra_jax.data import build_units
from electra_jax.data import build_worker
from electra_jax.data import dataset
from electra_jax.data import vocab as vocab_lib
from electra_jax.errors import UserInputError

from build_helpers import (MAX_LEN, NUM_DOCS, all_examples,  # noqa: F401 (fixtures)
                           assert_tensorflow_never_imported, build_at, built, corpus,
                           make_docs, record_files, write_docs, write_vocab)


def independent_counts(root, vocab):
  """Documents, non-blank lines, and WordPiece tokens, counted directly."""
  tok = tokenization.load_tokenizer(vocab)
  docs = lines = tokens = 0
  for name in sorted(os.listdir(root)):
    text = (root / name).read_bytes().decode("utf-8", "replace")
    for doc in re.split(r"\n\s*\n", text.replace("\ufeff", "")):
      doc_lines = [l.strip() for l in doc.split("\n") if l.strip()]
      docs += bool(doc_lines)
      lines += len(doc_lines)
      tokens += sum(len(tok.encode(l)) for l in doc_lines)
  return docs, lines, tokens


def test_layout_of_every_record(built):
  tok = tokenization.load_tokenizer(built.vocab_path)
  for split, source in built.sources.items():
    ex = all_examples(source)
    ids, mask, seg = ex["input_ids"], ex["input_mask"], ex["segment_ids"]
    assert ids.dtype == np.int32 and ids.shape == (len(source), MAX_LEN)
    n = mask.sum(1)
    pos = np.arange(MAX_LEN)
    np.testing.assert_array_equal(mask, pos[None] < n[:, None])
    assert (ids[:, 0] == tok.cls_id).all(), split
    assert (ids[np.arange(len(n)), n - 1] == tok.sep_id).all()
    assert (ids[mask == 0] == tok.pad_id).all()
    assert (seg[mask == 0] == 0).all()
    num_sep = ((ids == tok.sep_id) & (mask == 1)).sum(1)
    assert set(num_sep.tolist()) <= {1, 2}
    first_sep = np.argmax(ids == tok.sep_id, axis=1)
    np.testing.assert_array_equal(
        seg, (pos[None] > first_sep[:, None]) & (mask == 1))
    assert ((ids >= 0) & (ids < tok.vocab_size)).all()
  # Both layouts occur.
  ex = all_examples(built.sources["train"])
  pairs = (ex["segment_ids"].sum(1) > 0).mean()
  assert 0.5 < pairs < 1


def test_metadata_and_counts(built, corpus):
  root, vocab = corpus
  tok = tokenization.load_tokenizer(vocab)
  meta = built.metadata
  assert meta["format"] == dataset.FORMAT
  assert meta["vocab_fingerprint"] == tok.fingerprint == built.vocab_fingerprint
  assert meta["vocab_kind"] == "wordpiece"
  assert meta["vocab_size"] == tok.vocab_size
  assert meta["max_seq_length"] == MAX_LEN == built.max_seq_length
  assert meta["seed"] == 0
  with open(built.vocab_path, "rb") as f:
    assert f.read() == open(vocab, "rb").read()
  # The copy lives inside the dataset, not at the original path.
  assert built.vocab_path.startswith(built.path)
  counts = meta["counts"]
  docs, lines, tokens = independent_counts(root, vocab)
  assert counts["documents"] == docs == NUM_DOCS
  assert counts["lines"] == lines
  assert counts["tokens"] == tokens
  assert counts["files"] == 5 and counts["empty_files"] == 1
  assert counts["invalid_utf8_lines"] == 1
  assert counts["long_lines_split"] >= 1
  assert counts["examples"] == {k: len(v) for k, v in built.sources.items()}
  assert meta["files"] == sorted(str(p) for p in root.glob("*.txt"))
  # Content tokens in the records = tokens_in_examples (and <= tokens).
  content = 0
  for source in built.sources.values():
    ex = all_examples(source)
    pairs = (ex["segment_ids"].sum(1) > 0)
    content += int(ex["input_mask"].sum() - 2 * len(pairs) - pairs.sum())
  assert content == counts["tokens_in_examples"] <= tokens
  # Same metadata through tfds' own reader.
  info = tfds.builder_from_directory(built.path).info
  assert dict(info.metadata)["counts"] == counts


def test_validation_split_is_disjoint_by_documents(built):
  tok = tokenization.load_tokenizer(built.vocab_path)
  tag_ids = {tok.token_to_id(f"d{i}"): i for i in range(NUM_DOCS)}

  def docs_of(source):
    ids = all_examples(source)["input_ids"]
    found = set()
    for row in ids:
      tags = {tag_ids[t] for t in row.tolist() if t in tag_ids}
      assert len(tags) <= 1, "an example mixes documents"
      found |= tags
    return found

  train = docs_of(built.sources["train"])
  val = docs_of(built.sources["validation"])
  assert train and val and not train & val
  assert len(train | val) == NUM_DOCS
  assert 3 <= len(val) <= 30  # validation_fraction=0.1 of 120 documents.


@pytest.mark.parametrize("workers", [1, 2])
def test_identical_for_any_number_of_workers(built, corpus, tmp_path,
                                             workers):
  # `built` ran in-process (num_workers=0); these workers are spawned (this
  # process has JAX loaded).  test_cli_builds_with_sentencepiece forks them.
  out = tmp_path / "ds2"
  build_at(corpus, out, num_workers=workers)
  other = dataset.open_dataset(str(out))
  assert other.metadata == built.metadata
  for split in ("train", "validation"):
    a = all_examples(built.sources[split])
    b = all_examples(other.sources[split])
    for k in dataset.FEATURES:
      np.testing.assert_array_equal(a[k], b[k])
  # The record files are byte-identical too.
  names = sorted(n for n in os.listdir(built.path) if ".array_record" in n)
  assert names == sorted(n for n in os.listdir(other.path)
                         if ".array_record" in n)
  for n in names:
    with open(os.path.join(built.path, n), "rb") as f1, open(
        os.path.join(other.path, n), "rb") as f2:
      assert f1.read() == f2.read()


def test_workers_are_forked_only_where_that_is_safe(monkeypatch):
  start = build._start_method  # pylint: disable=protected-access
  assert "jax" in sys.modules  # tests/conftest.py imports it.
  assert start(True, True) == "spawn"
  for name in ("jax", "tensorflow", "torch"):
    monkeypatch.delitem(sys.modules, name, raising=False)
  fork = "fork" if sys.platform == "linux" else "spawn"
  # The thread count when electra_jax.data.build was imported is the norm.
  monkeypatch.setattr(build, "_THREADS_AT_IMPORT", build._os_threads())  # pylint: disable=protected-access
  if threading.active_count() == 1:
    assert start(True, True) == fork
  assert start(False, True) == "spawn"  # Not asked (library callers).
  assert start(True, False) == "spawn"  # tfds input.
  stop = threading.Event()
  other = threading.Thread(target=stop.wait)
  other.start()
  try:
    assert start(True, True) == "spawn"
  finally:
    stop.set()
    other.join()


def test_seed_changes_the_examples(corpus, tmp_path, built):
  build_at(corpus, tmp_path / "s1", num_workers=0, seed=1)
  other = dataset.open_dataset(str(tmp_path / "s1"))
  a = all_examples(built.sources["train"])["input_ids"]
  b = all_examples(other.sources["train"])["input_ids"]
  assert a.shape != b.shape or (a != b).any()


def test_crlf_gives_the_same_examples_as_lf(tmp_path):
  vocab = write_vocab(tmp_path / "vocab.txt")
  docs = make_docs(np.random.default_rng(1), 0, 8)
  outs = []
  for nl in ("\n", "\r\n"):
    d = tmp_path / repr(nl).strip("'").replace("\\", "")
    d.mkdir()
    write_docs(d / "x.txt", docs, newline=nl)
    build.build_dataset(str(d / "x.txt"), vocab, str(d / "out"),
                        max_seq_length=MAX_LEN, num_workers=0)
    outs.append(dataset.open_dataset(str(d / "out")))
  for split in ("train", "validation"):
    a, b = (all_examples(o.sources[split])["input_ids"] for o in outs)
    np.testing.assert_array_equal(a, b)


def test_at_least_one_validation_document(tmp_path):
  vocab = write_vocab(tmp_path / "vocab.txt")
  write_docs(tmp_path / "x.txt", make_docs(np.random.default_rng(2), 0, 2))
  build.build_dataset(str(tmp_path / "x.txt"), vocab, str(tmp_path / "out"),
                      max_seq_length=MAX_LEN, num_workers=0,
                      validation_fraction=1e-9)
  ds = dataset.open_dataset(str(tmp_path / "out"))
  assert len(ds.sources["validation"]) >= 1 and len(ds.sources["train"]) >= 1
  # No validation split at all with validation_fraction=0.
  build.build_dataset(str(tmp_path / "x.txt"), vocab, str(tmp_path / "out0"),
                      max_seq_length=MAX_LEN, num_workers=0,
                      validation_fraction=0)
  ds0 = dataset.open_dataset(str(tmp_path / "out0"))
  assert set(ds0.sources) == {"train"}
  # A single document cannot be split.
  write_docs(tmp_path / "one.txt", make_docs(np.random.default_rng(2), 0, 1))
  with pytest.raises(UserInputError, match="single document"):
    build.build_dataset(str(tmp_path / "one.txt"), vocab,
                        str(tmp_path / "out1"), max_seq_length=MAX_LEN,
                        num_workers=0)
  assert not (tmp_path / "out1").exists()


def test_unit_cuts_fall_on_document_boundaries(tmp_path):
  text = b"".join(b"line %d of doc %d\n" % (l, d) + (b"\n" if l == 4 else b"")
                  for d in range(200) for l in range(5))
  path = tmp_path / "x.txt"
  path.write_bytes(text)
  plan = build_units.plan_text_units
  units, sizes = plan([epath.Path(path)], 1000)
  assert len(units) > 10 and sizes == [len(text)]
  assert units[0].start == 0 and units[-1].end == len(text)
  for u, v in zip(units, units[1:]):
    assert u.end == v.start
    assert text[u.end - 2:u.end] == b"\n\n"  # Just after a blank line.
  # No blank lines at all: cut at line starts instead.
  flat = text.replace(b"\n\n", b"\n")
  path.write_bytes(flat)
  units, _ = plan([epath.Path(path)], 1000)
  assert len(units) > 10
  assert all(flat[u.start - 1:u.start] == b"\n" for u in units[1:])


def test_open_dataset_errors_and_check_compatible(built, tmp_path):
  with pytest.raises(UserInputError, match="does not exist"):
    dataset.open_dataset(str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserInputError, match="no built pretraining dataset"):
    dataset.open_dataset(str(tmp_path / "empty"))
  # The version dir itself works too.
  assert dataset.open_dataset(built.path).path == built.path
  dataset.check_compatible(built, vocab_fingerprint=built.vocab_fingerprint,
                           max_seq_length=MAX_LEN)
  dataset.check_compatible(built, vocab_fingerprint=None,
                           max_seq_length=MAX_LEN)
  with pytest.raises(UserInputError,
                     match=r"0123456789abcdef.*--vocab"):
    dataset.check_compatible(built, vocab_fingerprint="0123456789abcdef",
                             max_seq_length=MAX_LEN)
  with pytest.raises(UserInputError, match=r"32.*512.*--max_seq_length=512"):
    dataset.check_compatible(built, vocab_fingerprint=None,
                             max_seq_length=512)


def test_errors(corpus, tmp_path):
  root, vocab = corpus
  out = str(tmp_path / "out")
  with pytest.raises(UserInputError, match="nothing_here"):
    build.build_dataset(str(root / "nothing_here*.txt"), vocab, out)
  with pytest.raises(UserInputError, match="max_seq_length"):
    build.build_dataset(str(root / "a.txt"), vocab, out, max_seq_length=4)
  with pytest.raises(UserInputError, match="max_seq_length"):
    build.build_dataset(str(root / "a.txt"), vocab, out, max_seq_length=8192)
  with pytest.raises(UserInputError, match="empty"):
    build.build_dataset(str(root / "c_empty.txt"), vocab, out)
  (tmp_path / "blank.txt").write_text("\n  \n\r\n")
  with pytest.raises(UserInputError, match="no text"):
    build.build_dataset(str(tmp_path / "blank.txt"), vocab, out, num_workers=0)
  with pytest.raises(UserInputError, match="vocab"):
    build.build_dataset(str(root / "a.txt"), str(root / "missing.model"), out)
  with pytest.raises(UserInputError, match="either --input or --tfds"):
    build.build_dataset(str(root / "a.txt"), vocab, out, tfds_name="x")
  # An existing, non-empty output needs --overwrite; --overwrite replaces a
  # built dataset but never an unrelated directory.
  build_at(corpus, tmp_path / "o", num_workers=0)
  with pytest.raises(UserInputError, match="--overwrite"):
    build_at(corpus, tmp_path / "o", num_workers=0)
  build_at(corpus, tmp_path / "o", num_workers=0, overwrite=True, seed=3)
  assert dataset.open_dataset(str(tmp_path / "o")).metadata["seed"] == 3
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "precious.txt").write_text("x")
  with pytest.raises(UserInputError, match="refusing"):
    build_at(corpus, tmp_path / "mine", num_workers=0, overwrite=True)
  assert (tmp_path / "mine" / "precious.txt").exists()
  # Nor another tfds dataset.
  v = tmp_path / "mine" / "1.0.0"
  v.mkdir()
  (v / "dataset_info.json").write_text("{}")
  with pytest.raises(UserInputError, match="refusing"):
    build_at(corpus, tmp_path / "mine", num_workers=0, overwrite=True)
  assert (v / "dataset_info.json").exists()
  # Nothing but the finished outputs is left beside them.
  assert sorted(os.listdir(tmp_path)) == ["blank.txt", "mine", "o"]


def test_failure_leaves_nothing(corpus, tmp_path, monkeypatch):
  calls = []

  def failing(unit):
    calls.append(unit)
    if len(calls) == 3:
      raise RuntimeError("boom")
    return original(unit)

  original = build_worker.process_unit
  monkeypatch.setattr(build_worker, "process_unit", failing)
  with pytest.raises(RuntimeError, match="boom"):
    build_at(corpus, tmp_path / "out", num_workers=0)
  assert os.listdir(tmp_path) == []


def test_build_leaves_no_temporary_directory(corpus, tmp_path, tempdir):
  # tfds' builder made (and kept) an empty tmp*tfds directory on every build.
  build_at(corpus, tmp_path / "out", num_workers=0)
  dataset.open_dataset(str(tmp_path / "out"))
  assert os.listdir(tempdir) == []


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "electra_jax.data.build",
                         *args], capture_output=True, text=True, check=False)


def test_cli_builds_with_sentencepiece(corpus, tmp_path):
  root, _ = corpus
  model = vocab_lib.train_vocab(str(root / "a.txt"), str(tmp_path / "spm"),
                                vocab_size=70)
  out = tmp_path / "ds"
  res = run_cli(f"--input={root}/a.txt,{root}/d.txt", f"--vocab={model}",
                "--max_seq_length=48", f"--output_dir={out}",
                "--num_workers=2", "--validation_fraction=0.05")
  assert res.returncode == 0, res.stderr
  assert re.search(r"done in .* MB/s.*train \+ \d+ validation examples",
                   res.stdout), res.stdout
  if sys.platform == "linux":  # The CLI forks its workers where it may.
    assert "2 worker(s) (fork)" in res.stdout, res.stdout
  ds = dataset.open_dataset(str(out))
  tok = tokenization.load_tokenizer(model)
  assert ds.metadata["vocab_kind"] == "sentencepiece"
  assert ds.vocab_fingerprint == tok.fingerprint
  assert tokenization.load_tokenizer(ds.vocab_path).fingerprint == (
      tok.fingerprint)
  rec = ds.sources["train"][0]
  assert rec["input_ids"].shape == (48,) and rec["input_ids"][0] == tok.cls_id
  text = tok.decode(rec["input_ids"])
  assert re.match(r"^d0 ", text), text
  # Byte-identical to a build in this process (tfds' own serializer wrote the
  # features in an order that changed from one process to the next).
  build.build_dataset(f"{root}/a.txt,{root}/d.txt", model,
                      str(tmp_path / "here"), max_seq_length=48,
                      num_workers=0, validation_fraction=0.05)
  here = dataset.open_dataset(str(tmp_path / "here"))
  assert record_files(here) == record_files(ds)
  # Errors: exit status 2 and one line on stderr.
  res = run_cli(f"--input={root}/nothing*.txt", f"--vocab={model}",
                f"--output_dir={tmp_path / 'x'}")
  assert res.returncode == 2
  assert res.stderr.startswith("error: ") and "nothing*.txt" in res.stderr
  assert len(res.stderr.strip().splitlines()) == 1
  res = run_cli(f"--input={root}/a.txt", f"--vocab={model}",
                f"--output_dir={out}")
  assert res.returncode == 2 and "--overwrite" in res.stderr


def test_tensorflow_is_never_imported(built):
  assert len(built.sources["train"]) > 0
  assert_tensorflow_never_imported()
