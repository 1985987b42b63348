"""Tests for electra_jax.tokenization (WordPiece rules, loading, errors)."""

import hashlib
import io
import random

import pytest
import sentencepiece as spm

from electra_jax import tokenization
from electra_jax.errors import UserInputError

# A small hand-written vocab; ids are line numbers.  Specials are deliberately
# not at BERT's ids, to check they are looked up.
VOCAB = [
    "[PAD]",   # 0
    "hello",   # 1
    "world",   # 2
    "un",      # 3
    "##want",  # 4
    "##ed",    # 5
    "want",    # 6
    "[UNK]",   # 7
    ",",       # 8
    "!",       # 9
    ".",       # 10
    "runn",    # 11
    "##ing",   # 12
    "run",     # 13
    "##n",     # 14
    "cafe",    # 15
    "[CLS]",   # 16
    "[SEP]",   # 17
    "[",       # 18
    "]",       # 19
    "mask",    # 20
    "a",       # 21
    "##a",     # 22
    "ab",      # 23
    "##c",     # 24
    "中",      # 25
    "文",      # 26
    "'",       # 27
    "t",       # 28
    "don",     # 29
    "[MASK]",  # 30
    "Hello",   # 31
]
PAD, UNK, CLS, SEP, MASK = 0, 7, 16, 17, 30


def _write_vocab(path, tokens):
  path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
  return path


@pytest.fixture(name="wp")
def fixture_wp(tmp_path):
  return tokenization.WordPieceTokenizer(
      str(_write_vocab(tmp_path / "vocab.txt", VOCAB)))


@pytest.fixture(name="wp_cased")
def fixture_wp_cased(tmp_path):
  return tokenization.WordPieceTokenizer(
      str(_write_vocab(tmp_path / "vocab.txt", VOCAB)), lower_case=False)


def test_wordpiece_special_ids(wp):
  assert (wp.pad_id, wp.unk_id, wp.cls_id, wp.sep_id, wp.mask_id) == (
      PAD, UNK, CLS, SEP, MASK)
  assert wp.special_ids == frozenset({PAD, UNK, CLS, SEP, MASK})
  assert wp.vocab_size == len(VOCAB)
  assert wp.kind == "wordpiece"
  assert wp.token_to_id("##ing") == 12
  assert wp.token_to_id("not-a-token") == UNK
  assert wp.id_to_token(23) == "ab"
  with pytest.raises(IndexError):
    wp.id_to_token(len(VOCAB))


@pytest.mark.parametrize("text, expected", [
    # Lower-casing and punctuation splitting.
    ("Hello, World!", [1, 8, 2, 9]),
    ("HELLO world.", [1, 2, 10]),
    # Accent stripping (NFD, drop combining marks).
    ("Héllo", [1]),
    ("CAFÉ.", [15, 10]),
    # '##' continuations.
    ("unwanted", [3, 4, 5]),
    # Longest match first: runn+##ing, not run+##n+##ing.
    ("running", [11, 12]),
    ("abc", [23, 24]),
    ("aaa", [21, 22, 22]),
    # Unmatchable words become a single [UNK] (not a partial match + [UNK]).
    ("xyz", [UNK]),
    ("wantx", [UNK]),
    ("hello xyz world", [1, UNK, 2]),
    # Special tokens in the text are split like text.
    ("[MASK]", [18, 20, 19]),
    ("don't", [29, 27, 28]),
    # CJK ideographs are split into single characters.
    ("中文", [25, 26]),
    ("hello中文world", [1, 25, 26, 2]),
    # Cleanup: NUL, U+FFFD and control/format chars dropped; any whitespace
    # (tab, newline, NBSP) separates words.
    ("hel\x00lo\ufffd", [1]),
    ("hel\u200blo", [1]),
    ("hello\tworld\nhello\u00a0world\r\n", [1, 2, 1, 2]),
    # Unicode punctuation (P* categories) is split off.
    ("hello\u2014world", [1, UNK, 2]),
    ("\u00abhello\u00bb", [UNK, 1, UNK]),
    ("", []),
    ("   \n\t ", []),
])
def test_wordpiece_encode(wp, text, expected):
  assert wp.encode(text) == expected


def test_wordpiece_long_words(wp):
  assert wp.encode("a" * 100) == [21] + [22] * 99
  assert wp.encode("a" * 101) == [UNK]
  assert wp.encode("hello " + "a" * 101 + " world") == [1, UNK, 2]


def test_wordpiece_cased(wp_cased):
  assert wp_cased.encode("Hello hello") == [31, 1]
  assert wp_cased.encode("HELLO") == [UNK]
  assert wp_cased.encode("héllo") == [UNK]  # No accent stripping when cased.


def test_wordpiece_cjk_split_optional(tmp_path):
  tok = tokenization.WordPieceTokenizer(
      str(_write_vocab(tmp_path / "vocab.txt", VOCAB)), split_cjk=False)
  assert tok.encode("中文") == [UNK]  # "中" then "##文", which is missing.


def test_wordpiece_tokenize_and_decode(wp):
  assert wp.tokenize("Unwanted running!") == [
      "un", "##want", "##ed", "runn", "##ing", "!"]
  assert wp.decode([3, 4, 5, 11, 12, 9, PAD, PAD]) == "unwanted running !"
  assert wp.decode([CLS, 1, SEP]) == "[CLS] hello [SEP]"
  assert wp.encode_batch(["hello", "running", ""]) == [[1], [11, 12], []]


def test_ascii_fast_path_matches_general_path():
  # The general (non-ASCII) path runs when the text has any non-ASCII char; a
  # zero-width space is dropped by cleanup, so both paths must agree.
  rng = random.Random(0)
  alphabet = ("abcXYZ09 \t\n\r\x00\x01\x0b\x0c\x1f\x7f" +
              "".join(chr(c) for c in range(33, 127)))
  for _ in range(300):
    text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(30)))
    for lower in (True, False):
      fast = tokenization.basic_tokenize(text, lower)
      general = tokenization.basic_tokenize(text + "\u200b", lower)
      assert fast == general, repr(text)


def test_fingerprint(tmp_path):
  path = _write_vocab(tmp_path / "vocab.txt", VOCAB)
  a = tokenization.load_tokenizer(str(path))
  b = tokenization.load_tokenizer(str(path))
  assert a.fingerprint == b.fingerprint
  assert a.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
  assert a.path == str(path)
  _write_vocab(path, VOCAB + ["extra"])
  assert tokenization.load_tokenizer(str(path)).fingerprint != a.fingerprint


def test_load_tokenizer_wordpiece_dir_and_file(tmp_path):
  _write_vocab(tmp_path / "vocab.txt", VOCAB)
  for p in (tmp_path, tmp_path / "vocab.txt"):
    tok = tokenization.load_tokenizer(str(p))
    assert isinstance(tok, tokenization.WordPieceTokenizer)
    assert tok.encode("Hello!") == [1, 9]
  cased = tokenization.load_tokenizer(str(tmp_path), lower_case=False)
  assert cased.encode("Hello") == [31]


def _train_spm(**kwargs):
  lines = [f"the quick brown fox number {i} jumps over the lazy dog"
           for i in range(200)]
  model = io.BytesIO()
  spm.SentencePieceTrainer.Train(
      sentence_iterator=iter(lines), model_writer=model, vocab_size=60,
      model_type="bpe", minloglevel=2, num_threads=1, **kwargs)
  return model.getvalue()


def test_load_sentencepiece_with_specials_at_any_ids(tmp_path):
  data = _train_spm(unk_piece="[UNK]", unk_id=3, pad_id=-1, bos_id=-1,
                    eos_id=-1,
                    user_defined_symbols=["[MASK]", "[SEP]", "[CLS]", "[PAD]"])
  (tmp_path / "m.model").write_bytes(data)
  tok = tokenization.load_tokenizer(str(tmp_path))
  assert isinstance(tok, tokenization.SentencePieceTokenizer)
  assert tok.kind == "sentencepiece"
  assert tok.unk_id == 3
  for name in tokenization.SPECIAL_TOKENS:
    assert tok.id_to_token(tok.token_to_id(name)) == name
  assert len(tok.special_ids) == 5
  ids = tok.encode("the lazy fox")
  assert ids and tok.decode(ids) == "the lazy fox"


def test_sentencepiece_without_specials_is_rejected(tmp_path):
  (tmp_path / "plain.model").write_bytes(_train_spm())
  with pytest.raises(UserInputError,
                     match=r"\[PAD\].*electra_jax\.data\.vocab"):
    tokenization.load_tokenizer(str(tmp_path / "plain.model"))


def test_sentencepiece_wrong_unk_piece_is_rejected(tmp_path):
  data = _train_spm(control_symbols=["[PAD]", "[CLS]", "[SEP]", "[MASK]"],
                    user_defined_symbols=["[UNK]"])
  (tmp_path / "u.model").write_bytes(data)
  with pytest.raises(UserInputError, match="unknown piece"):
    tokenization.load_tokenizer(str(tmp_path / "u.model"))


def test_error_missing_mask(tmp_path):
  path = _write_vocab(tmp_path / "vocab.txt",
                      [t for t in VOCAB if t != "[MASK]"])
  with pytest.raises(UserInputError) as e:
    tokenization.load_tokenizer(str(path))
  msg = str(e.value)
  assert "[MASK]" in msg and "[PAD]" not in msg.split("(")[0]
  assert "python -m electra_jax.data.vocab" in msg
  assert "\n" not in msg


@pytest.mark.parametrize("setup, match", [
    (lambda d: None, "not found"),
    (lambda d: _write_vocab(d / "vocab.txt", VOCAB + ["hello"]),
     "duplicate token 'hello' on lines 2 and 33"),
    (lambda d: (d / "vocab.txt").write_text(""), "empty"),
    (lambda d: (d / "vocab.txt").write_bytes(b"\xff\xfe\n"), "not UTF-8"),
    (lambda d: _write_vocab(d / "vocab.txt", VOCAB[:3] + [""] + VOCAB[3:]),
     "line 4 is blank"),
    (lambda d: (d / "vocab.json").write_text("{}"), "unrecognised"),
    (lambda d: (d / "x.model").write_bytes(b"not a model"),
     "not a valid SentencePiece model"),
    (lambda d: (d / "x.model").write_bytes(b""), "empty"),
])
def test_load_errors(tmp_path, setup, match):
  setup(tmp_path)
  files = sorted(p for p in tmp_path.iterdir())
  path = files[0] if files else tmp_path / "vocab.txt"
  with pytest.raises(UserInputError, match=match) as e:
    tokenization.load_tokenizer(str(path))
  assert "\n" not in str(e.value)


def test_directory_errors(tmp_path):
  with pytest.raises(UserInputError, match="no vocab"):
    tokenization.load_tokenizer(str(tmp_path))
  _write_vocab(tmp_path / "vocab.txt", VOCAB)
  (tmp_path / "a.model").write_bytes(b"x")
  with pytest.raises(UserInputError, match="several vocabs"):
    tokenization.load_tokenizer(str(tmp_path))
