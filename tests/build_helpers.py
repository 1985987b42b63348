"""Shared by tests/test_build.py and tests/test_build_records.py: a small corpus with
the awkward cases (multi-unit files, CRLF, an empty file, bad UTF-8), its vocab, and the
dataset built from it (module-scoped fixtures: import them into a test module)."""

import os
import sys

import numpy as np
import pytest

from electra_jax.data import build
from electra_jax.data import dataset

MAX_LEN = 32
WORDS = ("the a of and to in was it he she that for on with as his her at by "
         "had not be but from they which this have all were you one said so "
         "no there would been when who into an more if out up some could "
         "sea ship whale captain sir lady letter house").split()
NUM_DOCS = 120


def write_vocab(path):
  """A WordPiece vocab: the specials, WORDS, and one tag per document."""
  tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","]
  tokens += WORDS + [f"d{i}" for i in range(NUM_DOCS + 10)]
  path.write_text("\n".join(tokens) + "\n")
  return str(path)


def make_docs(rng, first, num):
  """Documents whose every line starts with the document's tag d<index>."""
  docs = []
  for d in range(first, first + num):
    lines = []
    for _ in range(int(rng.integers(1, 7))):
      n = int(rng.integers(2, 25))
      lines.append(f"d{d} " + " ".join(rng.choice(WORDS, n)) + " .")
    docs.append(lines)
  return docs


def write_docs(path, docs, newline="\n", prefix=b""):
  text = (newline * 2).join(newline.join(lines) for lines in docs) + newline
  path.write_bytes(prefix + text.encode())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """Text files exercising multi-unit files, CRLF, empty and bad UTF-8."""
  root = tmp_path_factory.mktemp("corpus")
  rng = np.random.default_rng(0)
  # a.txt is big enough to be cut into several units of 2 KiB.
  write_docs(root / "a.txt", make_docs(rng, 0, 60))
  write_docs(root / "b.txt", make_docs(rng, 60, 30), newline="\r\n")
  (root / "c_empty.txt").write_bytes(b"")
  docs = make_docs(rng, 90, 29)
  docs[3].append("d93 " + " ".join(rng.choice(WORDS, 200)))  # A long line.
  write_docs(root / "d.txt", docs)
  # One document with an invalid UTF-8 line (and a BOM at the file start).
  (root / "e.txt").write_bytes(
      b"\xef\xbb\xbfd119 she said \xff\xfe so .\nd119 the sea .\n\n  \n")
  vocab = write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")
  return root, vocab


def build_at(corpus, out, **kw):
  root, vocab = corpus
  kw.setdefault("unit_bytes", 2048)
  kw.setdefault("validation_fraction", 0.1)
  return build.build_dataset(str(root / "*.txt"), vocab, str(out),
                             max_seq_length=MAX_LEN, **kw)


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("built") / "ds"
  build_at(corpus, out, num_workers=0)
  return dataset.open_dataset(str(out))


def all_examples(source):
  rows = source.__getitems__(list(range(len(source))))
  return {k: np.stack([r[k] for r in rows]) for k in dataset.FEATURES}


def record_files(ds):
  """{file name: bytes} of a built dataset's ArrayRecord files."""
  return {n: open(os.path.join(ds.path, n), "rb").read()
          for n in sorted(os.listdir(ds.path)) if ".array_record" in n}


def assert_tensorflow_never_imported():
  """The builder and readers must work without TensorFlow (tfds without TF)."""
  assert "tensorflow" not in sys.modules
