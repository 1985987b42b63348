"""Tokenizers: one interface over SentencePiece models and WordPiece vocabs.

Use `load_tokenizer(path)`; it accepts a SentencePiece `.model` file, a
BERT-style `vocab.txt`, or a directory holding exactly one of them (for example
the output directory of `python -m electra_jax.data.vocab`).  Local paths and
`gs://` URLs both work (files are read through `etils.epath`).

Every vocab must contain the five special tokens in `SPECIAL_TOKENS`; their
ids are looked up, never assumed.  `encode` returns ids for plain text and
never adds [CLS]/[SEP]; special tokens written literally in the text (e.g.
"[MASK]") are NOT recognised as specials -- they are tokenized like any other
text.  Callers insert special ids themselves.
"""
import abc
import functools
import hashlib
import re
from typing import Iterable, Sequence
import unicodedata

from etils import epath
import sentencepiece

from electra_jax.errors import UserInputError

PAD = "[PAD]"
UNK = "[UNK]"
CLS = "[CLS]"
SEP = "[SEP]"
MASK = "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)

_BUILD_HINT = ("build one with `python -m electra_jax.data.vocab --input=... "
               "--output=DIR`")


def fingerprint_bytes(data: bytes) -> str:
  """A vocab file's fingerprint: the first 16 hex chars of its sha256."""
  return hashlib.sha256(data).hexdigest()[:16]


def _missing_specials_error(path, missing: Sequence[str]) -> UserInputError:
  return UserInputError(
      f"vocab {path} lacks the special token(s) {', '.join(missing)} "
      f"(needs all of {', '.join(SPECIAL_TOKENS)}); {_BUILD_HINT}")


class Tokenizer(abc.ABC):
  """Text <-> ids over a fixed vocab that contains the five special tokens."""

  kind: str = ""

  def __init__(self, path: str, data: bytes):
    self._path = str(path)
    self._fingerprint = fingerprint_bytes(data)

  @property
  def path(self) -> str:
    """The vocab file this tokenizer was loaded from."""
    return self._path

  @property
  def fingerprint(self) -> str:
    """First 16 hex chars of sha256 of the vocab file's bytes."""
    return self._fingerprint

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids; every id is in [0, vocab_size)."""

  @abc.abstractmethod
  def token_to_id(self, token: str) -> int:
    """Id of `token`; tokens not in the vocab give `unk_id`."""

  @abc.abstractmethod
  def id_to_token(self, i: int) -> str:
    """Token string for id `i` (IndexError when out of range)."""

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Ids for `text`, without [CLS]/[SEP]."""

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` over a list of texts."""
    return [self.encode(t) for t in texts]

  @abc.abstractmethod
  def decode(self, ids: Iterable[int]) -> str:
    """Text for `ids`; [PAD] ids are skipped."""

  @functools.cached_property
  def pad_id(self) -> int:
    return self.token_to_id(PAD)

  @functools.cached_property
  def unk_id(self) -> int:
    return self.token_to_id(UNK)

  @functools.cached_property
  def cls_id(self) -> int:
    return self.token_to_id(CLS)

  @functools.cached_property
  def sep_id(self) -> int:
    return self.token_to_id(SEP)

  @functools.cached_property
  def mask_id(self) -> int:
    return self.token_to_id(MASK)

  @functools.cached_property
  def special_ids(self) -> frozenset[int]:
    """The ids of [PAD], [UNK], [CLS], [SEP] and [MASK]."""
    return frozenset(
        (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id))

  def __repr__(self) -> str:
    return (f"{type(self).__name__}(path={self.path!r}, "
            f"vocab_size={self.vocab_size}, fingerprint={self.fingerprint})")


# ----------------------------------------------------------------------------
# SentencePiece


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model (.model) whose pieces include the five specials.

  [UNK] must be the model's unknown piece; the other four may have any ids
  (models from `electra_jax.data.vocab` use [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3
  [MASK]=4, with [CLS]/[SEP]/[MASK] as control symbols that plain text never
  produces).
  """

  kind = "sentencepiece"

  def __init__(self, path: str, data: bytes | None = None):
    if data is None:
      data = _read_bytes(path)
    super().__init__(path, data)
    if not data:
      raise UserInputError(f"vocab file {path} is empty; {_BUILD_HINT}")
    try:
      self._sp = sentencepiece.SentencePieceProcessor(model_proto=data)
    except Exception as e:  # pylint: disable=broad-except
      raise UserInputError(
          f"{path} is not a valid SentencePiece model "
          f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
          f"{_BUILD_HINT}") from None
    sp = self._sp
    size = sp.get_piece_size()
    if size == 0:
      raise UserInputError(f"SentencePiece model {path} has an empty vocab; "
                           f"{_BUILD_HINT}")
    missing = []
    for tok in SPECIAL_TOKENS:
      i = sp.piece_to_id(tok)
      if not 0 <= i < size or sp.id_to_piece(i) != tok:
        missing.append(tok)
    if missing:
      raise _missing_specials_error(path, missing)
    unk_piece = sp.id_to_piece(sp.unk_id())
    if unk_piece != UNK:
      raise UserInputError(
          f"SentencePiece model {path} uses {unk_piece!r} as its unknown piece,"
          f" not {UNK}, so encode() would never emit {UNK}; {_BUILD_HINT}")
    self._ids = {tok: sp.piece_to_id(tok) for tok in SPECIAL_TOKENS}

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def token_to_id(self, token: str) -> int:
    return self._sp.piece_to_id(token)

  def id_to_token(self, i: int) -> str:
    i = int(i)
    if not 0 <= i < self.vocab_size:
      raise IndexError(f"id {i} out of range [0, {self.vocab_size})")
    return self._sp.id_to_piece(i)

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text, out_type=int)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Encodes many texts at once (SentencePiece's multi-threaded path)."""
    if not texts:
      return []
    return self._sp.encode(list(texts), out_type=int)

  def decode(self, ids: Iterable[int]) -> str:
    pad = self.pad_id
    return self._sp.decode([int(i) for i in ids if int(i) != pad])


# ----------------------------------------------------------------------------
# WordPiece (BERT uncased rules)

# ASCII punctuation as BERT defines it: everything printable that is not a
# letter, digit or space.
_ASCII_PUNCT = frozenset(
    chr(c) for r in ((33, 48), (58, 65), (91, 97), (123, 127))
    for c in range(*r))

# CJK Unified Ideographs blocks (and extensions / compatibility ideographs);
# other scripts (Hiragana, Hangul, ...) are written with spaces or handled
# by wordpiece.
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))

# ASCII fast path: drop control chars (except tab/newline/CR -> space) and map
# them as `_clean_text` would; then a word is a run of letters/digits and every
# other printable char is its own punctuation token.
_ASCII_CLEAN_TABLE = {c: None for c in range(32)}
_ASCII_CLEAN_TABLE.update({9: " ", 10: " ", 13: " ", 127: None})
_ASCII_TOKEN_RE = re.compile(r"[0-9A-Za-z]+|[^0-9A-Za-z ]")

_MAX_CHARS_PER_WORD = 100
_WORD_CACHE_SIZE = 1 << 16


def _is_whitespace(ch: str) -> bool:
  return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
  if ch in "\t\n\r":
    return False
  return unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
  return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def _is_cjk(ch: str) -> bool:
  cp = ord(ch)
  return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _strip_accents(text: str) -> str:
  return "".join(ch for ch in unicodedata.normalize("NFD", text)
                 if unicodedata.category(ch) != "Mn")


def _split_punctuation(word: str) -> list[str]:
  out, cur = [], []
  for ch in word:
    if _is_punctuation(ch):
      if cur:
        out.append("".join(cur))
        cur = []
      out.append(ch)
    else:
      cur.append(ch)
  if cur:
    out.append("".join(cur))
  return out


def basic_tokenize(text: str, lower_case: bool = True,
                   split_cjk: bool = True) -> list[str]:
  """BERT's basic tokenizer: clean, split CJK, lower/strip accents, split punct.

  Args:
    text: raw text.
    lower_case: lower-case and strip accents (NFD, drop combining marks).
    split_cjk: put each CJK ideograph in its own word.

  Returns:
    The words (before wordpiece).
  """
  if text.isascii():
    text = text.translate(_ASCII_CLEAN_TABLE)
    if lower_case:
      text = text.lower()
    return _ASCII_TOKEN_RE.findall(text)
  chars = []
  for ch in text:
    cp = ord(ch)
    if cp == 0 or cp == 0xFFFD or _is_control(ch):
      continue
    if _is_whitespace(ch):
      chars.append(" ")
    elif split_cjk and _is_cjk(ch):
      chars.extend((" ", ch, " "))
    else:
      chars.append(ch)
  words = []
  for word in "".join(chars).split():
    if lower_case:
      word = _strip_accents(word.lower())
    words.extend(_split_punctuation(word))
  return words


class WordPieceTokenizer(Tokenizer):
  """A BERT vocab.txt (one token per line, id = line number) with BERT's rules.

  Text is cleaned (NUL, U+FFFD and control chars dropped, whitespace -> space),
  CJK ideographs split apart, lower-cased and accent-stripped (when
  `lower_case`), split at punctuation, then each word is split greedily
  longest-match-first into pieces ('##' marks a continuation).  A word longer
  than 100 chars, or one that cannot be fully matched, becomes a single [UNK].
  Special tokens in the text are not recognised: "[MASK]" -> "[", "mask", "]".
  """

  kind = "wordpiece"

  def __init__(self, path: str, lower_case: bool = True,
               split_cjk: bool = True, data: bytes | None = None):
    if data is None:
      data = _read_bytes(path)
    super().__init__(path, data)
    self.lower_case = lower_case
    self.split_cjk = split_cjk
    try:
      text = data.decode("utf-8")
    except UnicodeDecodeError as e:
      raise UserInputError(
          f"vocab file {path} is not UTF-8 text (byte {e.start}); expected a "
          f"BERT vocab.txt with one token per line") from None
    lines = text.split("\n")
    if lines and lines[-1].strip() == "":
      lines.pop()  # Trailing newline.
    if not lines:
      raise UserInputError(f"vocab file {path} is empty; {_BUILD_HINT}")
    tokens, vocab = [], {}
    for lineno, line in enumerate(lines, 1):
      tok = line.strip()
      if not tok:
        raise UserInputError(
            f"vocab file {path} line {lineno} is blank; every line of a "
            f"vocab.txt must hold one token (remove the blank line)")
      if tok in vocab:
        raise UserInputError(
            f"vocab file {path} has duplicate token {tok!r} on lines "
            f"{vocab[tok] + 1} and {lineno}; each token must appear once")
      vocab[tok] = len(tokens)
      tokens.append(tok)
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
      raise _missing_specials_error(path, missing)
    self._tokens = tokens
    self._vocab = vocab
    self._unk = vocab[UNK]
    self._word_ids = functools.lru_cache(maxsize=_WORD_CACHE_SIZE)(
        self._wordpiece)

  @property
  def vocab_size(self) -> int:
    return len(self._tokens)

  def token_to_id(self, token: str) -> int:
    return self._vocab.get(token, self._unk)

  def id_to_token(self, i: int) -> str:
    i = int(i)
    if not 0 <= i < len(self._tokens):
      raise IndexError(f"id {i} out of range [0, {len(self._tokens)})")
    return self._tokens[i]

  def _wordpiece(self, word: str) -> tuple[int, ...]:
    """Greedy longest-match-first split of one word into piece ids."""
    n = len(word)
    if n > _MAX_CHARS_PER_WORD:
      return (self._unk,)
    vocab = self._vocab
    ids, start = [], 0
    while start < n:
      end = n
      found = None
      while end > start:
        piece = word[start:end]
        if start > 0:
          piece = "##" + piece
        found = vocab.get(piece)
        if found is not None:
          break
        end -= 1
      if found is None:
        return (self._unk,)
      ids.append(found)
      start = end
    return tuple(ids)

  def tokenize(self, text: str) -> list[str]:
    """Token strings for `text` (for inspection; `encode` gives ids)."""
    return [self._tokens[i] for i in self.encode(text)]

  def encode(self, text: str) -> list[int]:
    ids = []
    for word in basic_tokenize(text, self.lower_case, self.split_cjk):
      ids.extend(self._word_ids(word))
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    pad = self._vocab[PAD]
    out = []
    for i in ids:
      i = int(i)
      if i == pad:
        continue
      tok = self.id_to_token(i)
      if tok.startswith("##") and out:
        out[-1] += tok[2:]
      else:
        out.append(tok)
    return " ".join(out)


# ----------------------------------------------------------------------------
# Loading


def _read_bytes(path) -> bytes:
  p = epath.Path(path)
  try:
    return p.read_bytes()
  except FileNotFoundError:
    raise UserInputError(
        f"vocab file {path} not found; pass a SentencePiece .model, a "
        f"vocab.txt or a directory holding one, or {_BUILD_HINT}") from None
  except IsADirectoryError:
    raise UserInputError(f"{path} is a directory, expected a vocab file")


def _find_in_dir(d: epath.Path) -> epath.Path:
  names = sorted(p.name for p in d.iterdir())
  candidates = [n for n in names if n.endswith(".model") or n == "vocab.txt"]
  if len(candidates) == 1:
    return d / candidates[0]
  if not candidates:
    raise UserInputError(
        f"directory {d} holds no vocab (no *.model or vocab.txt); pass the "
        f"vocab file itself, or {_BUILD_HINT}")
  raise UserInputError(
      f"directory {d} holds several vocabs ({', '.join(candidates)}); pass the "
      f"one to use as the full file path")


def load_tokenizer(path: str, lower_case: bool = True) -> Tokenizer:
  """Loads a tokenizer from a vocab file or a directory holding one.

  Args:
    path: a SentencePiece `.model`, a WordPiece `*.txt` (BERT vocab.txt), or a
      directory containing exactly one `*.model` / `vocab.txt`.  Local or gs://.
    lower_case: WordPiece only: lower-case and strip accents (BERT uncased).
      SentencePiece models carry their own normalization.

  Returns:
    A `SentencePieceTokenizer` or `WordPieceTokenizer`.

  Raises:
    UserInputError: missing/unrecognised/invalid vocab, or one lacking any of
      the five special tokens.
  """
  if not str(path):
    raise UserInputError("no vocab path given; pass a .model, vocab.txt or "
                         "directory")
  p = epath.Path(path)
  if p.is_dir():
    p = _find_in_dir(p)
  elif not p.exists():
    raise UserInputError(
        f"vocab {path} not found; pass a SentencePiece .model, a vocab.txt or "
        f"a directory holding one, or {_BUILD_HINT}")
  name = p.name
  if name.endswith(".model"):
    return SentencePieceTokenizer(str(p))
  if name.endswith(".txt"):
    return WordPieceTokenizer(str(p), lower_case=lower_case)
  if name.endswith(".vocab"):
    raise UserInputError(
        f"{p} is a SentencePiece piece listing, not a model; pass the .model "
        f"file beside it")
  raise UserInputError(
      f"unrecognised vocab file {p}: expected a SentencePiece .model, a "
      f"WordPiece vocab.txt, or a directory holding one")
