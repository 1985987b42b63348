"""Tests for electra_jax.data.vocab (SentencePiece vocab trainer and CLI)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from electra_jax import tokenization
from electra_jax.data import vocab
from electra_jax.errors import UserInputError

CORPUS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "corpus"
REPO = pathlib.Path(__file__).resolve().parents[1]
VOCAB_SIZE = 300


def _corpus_lines(name, n):
  path = CORPUS / name
  if not path.exists():
    pytest.skip(f"{path} not available")
  with path.open(encoding="utf-8") as f:
    return [next(f) for _ in range(n)]


@pytest.fixture(name="corpus", scope="module")
def fixture_corpus(tmp_path_factory):
  """Two small text files (with blank lines and a bad UTF-8 byte)."""
  d = tmp_path_factory.mktemp("corpus")
  (d / "a.txt").write_text("".join(_corpus_lines("austen.txt", 800)),
                           encoding="utf-8")
  (d / "b.txt").write_bytes(
      "".join(_corpus_lines("moby_dick.txt", 400)).encode("utf-8") +
      b"\n\n   \nbad \xff byte line\n")
  return d


@pytest.fixture(name="trained", scope="module")
def fixture_trained(corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("vocabs") / "uni"
  path = vocab.train_vocab(str(corpus / "*.txt"), str(out),
                           vocab_size=VOCAB_SIZE)
  return pathlib.Path(path)


def test_outputs_and_special_ids(trained, corpus):
  assert trained.name == "spm.model"
  tok = tokenization.load_tokenizer(str(trained))
  assert tok.kind == "sentencepiece"
  assert tok.vocab_size == VOCAB_SIZE
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (
      0, 1, 2, 3, 4)
  assert [tok.id_to_token(i) for i in range(5)] == list(
      tokenization.SPECIAL_TOKENS)
  info = json.loads((trained.parent / "vocab_info.json").read_text())
  assert info["fingerprint"] == tok.fingerprint
  assert info["special_tokens"] == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2,
                                    "[SEP]": 3, "[MASK]": 4}
  assert info["input_files"] == [str(corpus / "a.txt"), str(corpus / "b.txt")]
  assert info["model_type"] == "unigram" and info["lower_case"]
  pieces = (trained.parent / "spm.vocab").read_text(encoding="utf-8")
  assert len(pieces.splitlines()) == VOCAB_SIZE
  assert pieces.startswith("[PAD]\t")
  # No temp dirs left beside the output.
  assert [p.name for p in trained.parent.parent.iterdir()] == ["uni"]


def test_load_tokenizer_dir_and_model_file(trained):
  a = tokenization.load_tokenizer(str(trained.parent))
  b = tokenization.load_tokenizer(str(trained))
  assert a.path == b.path == str(trained)
  assert a.fingerprint == b.fingerprint
  assert a.encode("It is a truth.") == b.encode("It is a truth.")


def test_deterministic(trained, corpus, tmp_path):
  again = vocab.train_vocab([str(corpus / "*.txt")], str(tmp_path / "again"),
                            vocab_size=VOCAB_SIZE)
  assert pathlib.Path(again).read_bytes() == trained.read_bytes()


def test_subsample_deterministic_and_seeded(corpus, tmp_path):
  def train(name, seed):
    path = vocab.train_vocab(str(corpus / "*.txt"), str(tmp_path / name),
                             vocab_size=150, model_type="bpe",
                             max_sentences=300, seed=seed)
    info = json.loads((tmp_path / name / "vocab_info.json").read_text())
    assert info["num_training_sentences"] == 300
    assert info["num_input_sentences"] > 300
    return pathlib.Path(path).read_bytes()
  first = train("s0", 0)
  assert train("s0b", 0) == first
  assert train("s1", 1) != first


def test_sample_sentences():
  lines = [f"line {i}" for i in range(1000)]
  sample, total = vocab.sample_sentences(iter(lines), 100, seed=0)
  assert total == 1000 and len(sample) == 100 and len(set(sample)) == 100
  assert sample == sorted(sample, key=lines.index)  # Corpus order kept.
  assert vocab.sample_sentences(iter(lines), 100, seed=0)[0] == sample
  assert vocab.sample_sentences(iter(lines), 100, seed=1)[0] != sample
  assert vocab.sample_sentences(iter(lines[:50]), 100, seed=0) == (
      lines[:50], 50)


def test_case_folding(trained, corpus, tmp_path):
  tok = tokenization.load_tokenizer(str(trained))
  assert tok.encode("HELLO There, Mr. DARCY") == tok.encode(
      "hello there, mr. darcy")
  cased = tokenization.load_tokenizer(vocab.train_vocab(
      str(corpus / "*.txt"), str(tmp_path / "cased"), vocab_size=150,
      model_type="bpe", lower_case=False))
  assert cased.encode("Elizabeth") != cased.encode("elizabeth")
  assert cased.decode(cased.encode("Elizabeth")) == "Elizabeth"


def test_round_trip_and_no_special_ids(trained, corpus):
  tok = tokenization.load_tokenizer(str(trained))
  text = "it is a truth universally acknowledged, that a single man"
  ids = tok.encode(text)
  assert ids and tok.decode(ids) == text
  assert tok.decode(ids + [tok.pad_id] * 3) == text
  lines = [l.strip() for l in (corpus / "a.txt").read_text().splitlines()
           if l.strip()]
  batch = tok.encode_batch(lines)
  assert batch == [tok.encode(l) for l in lines]
  used = {i for ids in batch for i in ids}
  assert not used & {tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id}
  # [UNK] only for characters outside the coverage (rare ones).
  common = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ,.;")
  plain = [l for l in lines if set(l) <= common]
  assert len(plain) > 50
  assert tok.unk_id not in {i for l in plain for i in tok.encode(l)}
  # Special tokens written in the text are not special.
  literal = tok.encode("[CLS] a [MASK] b [SEP] [PAD]")
  assert not set(literal) & {tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id}
  assert all(0 <= i < tok.vocab_size for i in literal)


def test_iter_sentences_skips_blanks_and_replaces_bad_utf8(corpus):
  lines = list(vocab.iter_sentences([str(corpus / "b.txt")]))
  assert all(l and l == l.strip() for l in lines)
  assert lines[-1] == "bad \ufffd byte line"


def test_expand_globs(corpus):
  a, b = str(corpus / "a.txt"), str(corpus / "b.txt")
  assert vocab.expand_globs(f"{corpus}/b*,{corpus}/*.txt") == [b, a]
  assert vocab.expand_globs([a, b, a]) == [a, b]
  missing = f"{corpus}/nothing*.txt"
  with pytest.raises(UserInputError, match="nothing"):
    vocab.expand_globs(f"{a},{missing}")
  with pytest.raises(UserInputError, match="directory"):
    vocab.expand_globs(str(corpus))


def test_errors(corpus, trained, tmp_path):
  glob = str(corpus / "*.txt")
  with pytest.raises(UserInputError, match=r"vocab_size=100000 .*at most \d+"):
    vocab.train_vocab(glob, str(tmp_path / "big"), vocab_size=100000,
                      model_type="bpe")
  with pytest.raises(UserInputError, match="too small"):
    vocab.train_vocab(glob, str(tmp_path / "small"), vocab_size=20)
  with pytest.raises(UserInputError, match="model_type"):
    vocab.train_vocab(glob, str(tmp_path / "x"), model_type="wordpiece")
  (tmp_path / "blank.txt").write_text("\n  \n\n")
  with pytest.raises(UserInputError, match="no non-blank lines"):
    vocab.train_vocab(str(tmp_path / "blank.txt"), str(tmp_path / "x"))
  with pytest.raises(UserInputError, match="already exists"):
    vocab.train_vocab(glob, str(trained.parent), vocab_size=VOCAB_SIZE)
  assert not (tmp_path / "big").exists() and not (tmp_path / "x").exists()


def test_overwrite(corpus, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "stale.txt").write_text("old")
  vocab.train_vocab(str(corpus / "a.txt"), str(out), vocab_size=150,
                    model_type="bpe", overwrite=True)
  assert sorted(p.name for p in out.iterdir()) == [
      "spm.model", "spm.vocab", "vocab_info.json"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", "electra_jax.data.vocab", *args],
                        capture_output=True, text=True, cwd=REPO, env=env,
                        timeout=120, check=False)


def test_cli(corpus, tmp_path):
  out = tmp_path / "cli"
  r = _cli(f"--input={corpus}/a.txt", f"--output={out}", "--vocab_size=150",
           "--model_type=bpe", "--lower_case=true", "--seed=0")
  assert r.returncode == 0, r.stderr
  assert len(r.stdout.strip().splitlines()) == 1
  assert "150" in r.stdout and "spm.model" in r.stdout
  assert tokenization.load_tokenizer(str(out)).vocab_size == 150

  r = _cli(f"--input={corpus}/missing*.txt", f"--output={tmp_path / 'x'}")
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
  assert "missing*.txt" in lines[0]
