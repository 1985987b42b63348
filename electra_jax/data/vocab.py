r"""Trains a SentencePiece vocab on a text corpus (deterministically).

  python -m electra_jax.data.vocab --input='corpus/*.txt,more/*.txt' \
      --vocab_size=30522 --output=DIR [--model_type=unigram|bpe] \
      [--lower_case=true] [--max_sentences=2000000] [--seed=0] [--overwrite]

Writes DIR/spm.model (load it with `electra_jax.tokenization.load_tokenizer`),
DIR/spm.vocab (piece<TAB>score per line, for reading) and DIR/vocab_info.json
(settings, input files, sentence counts, the model's fingerprint).

Special tokens have fixed ids: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4.
[PAD] and [UNK] are SentencePiece's pad and unknown pieces; [CLS], [SEP] and
[MASK] are *control symbols*: they have ids and `piece_to_id` finds them, but
encoding plain text never produces them (a literal "[MASK]" in the text is
split like any other text, as the WordPiece tokenizer does), and decoding
renders them as "".  There is no BOS/EOS.

Determinism: the same input files, arguments and sentencepiece version give a
byte-identical spm.model.  Lines are read in a fixed order (globs in the order
given, matches sorted by path); when there are more than `max_sentences`
non-blank lines a seeded reservoir sample is taken here (kept in corpus order)
and SentencePiece's own sampling/shuffling is switched off; the thread count is
fixed (it changes the model) and SentencePiece's random seed is set.

Each non-blank line is one training sentence (leading/trailing whitespace
stripped, invalid UTF-8 replaced by U+FFFD, lines over 16384 chars truncated).
"""

import io
import json
import os
import random
import re
import shutil
import sys
import time
from typing import Iterator, Sequence
import uuid

from absl import app
from absl import flags
from etils import epath
import sentencepiece as spm

from electra_jax import tokenization
from electra_jax.errors import run_cli
from electra_jax.errors import UserInputError

MODEL_FILE = "spm.model"
VOCAB_FILE = "spm.vocab"
INFO_FILE = "vocab_info.json"

MODEL_TYPES = ("unigram", "bpe")

# The trained model depends on the thread count, so it is fixed, not the
# machine's core count.
NUM_THREADS = 16
# Longer lines are truncated (SentencePiece would silently drop them).
MAX_LINE_CHARS = 16384

_GLOB_CHARS = re.compile(r"[*?\[]")


def expand_globs(input_globs: str | Sequence[str]) -> list[str]:
  """Files matched by comma-separated globs, in a fixed order.

  Globs are taken in the order given; each glob's matches are sorted by path;
  a file matched twice is kept once (first place).

  Args:
    input_globs: a comma-separated string or a list of globs (local or gs://).

  Returns:
    The matched file paths.

  Raises:
    UserInputError: when no glob is given or a glob matches no file.
  """
  if isinstance(input_globs, str):
    input_globs = [input_globs]
  globs = [g.strip() for s in input_globs for g in s.split(",") if g.strip()]
  if not globs:
    raise UserInputError(
        "no input given; pass --input='corpus/*.txt' (comma-separate several "
        "globs)")
  files, seen = [], set()
  for g in globs:
    matches = _expand_one(g)
    if not matches:
      raise UserInputError(
          f"--input glob {g!r} matched no files; check the path (one sentence "
          f"or paragraph per line, comma-separate several globs)")
    for m in matches:
      if m not in seen:
        seen.add(m)
        files.append(m)
  return files


def _expand_one(pattern: str) -> list[str]:
  """Sorted file paths matching one glob (a plain path matches itself)."""
  if "://" not in pattern:
    pattern = os.path.expanduser(pattern)
  if not _GLOB_CHARS.search(pattern):
    p = epath.Path(pattern)
    if p.is_dir():
      raise UserInputError(
          f"--input {pattern!r} is a directory; pass a glob such as "
          f"'{pattern.rstrip('/')}/*.txt'")
    return [pattern] if p.exists() else []
  parts = pattern.split("/")
  first = next(i for i, part in enumerate(parts) if _GLOB_CHARS.search(part))
  base = "/".join(parts[:first]) or ("/" if pattern.startswith("/") else ".")
  rel = "/".join(parts[first:])
  base_path = epath.Path(base)
  if not base_path.is_dir():
    return []
  return sorted(os.fspath(p) for p in base_path.glob(rel) if not p.is_dir())


def iter_sentences(files: Sequence[str]) -> Iterator[str]:
  """Non-blank, stripped lines of `files` in order (bad UTF-8 replaced)."""
  for f in files:
    with epath.Path(f).open("rb") as raw:
      text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
      for line in text:
        line = line.strip()
        if line:
          yield line[:MAX_LINE_CHARS]


def sample_sentences(sentences: Iterator[str], max_sentences: int,
                     seed: int) -> tuple[list[str], int]:
  """Seeded reservoir sample of at most `max_sentences`, kept in input order.

  Args:
    sentences: the sentences, in a fixed order.
    max_sentences: the sample size.
    seed: the sampling seed.

  Returns:
    (the sample, the number of sentences seen).  All of them when there are
    no more than `max_sentences`.
  """
  rng = random.Random(seed)
  reservoir: list[tuple[int, str]] = []
  n = 0
  for n, s in enumerate(sentences, 1):
    if len(reservoir) < max_sentences:
      reservoir.append((n, s))
    else:
      j = rng.randrange(n)
      if j < max_sentences:
        reservoir[j] = (n, s)
  if n > max_sentences:
    reservoir.sort()
  return [s for _, s in reservoir], n


def _check_output(out: epath.Path, overwrite: bool) -> None:
  if out.exists():
    if not out.is_dir():
      raise UserInputError(f"--output {out} exists and is a file; pass a "
                           f"directory path")
    if not overwrite and any(True for _ in out.iterdir()):
      raise UserInputError(
          f"--output {out} already exists and is not empty; pass --overwrite "
          f"to replace it or choose another directory")


def _training_error(e: Exception, vocab_size: int) -> UserInputError:
  msg = str(e)
  m = re.search(r"Vocabulary size too high \((\d+)\).*?<= (\d+)", msg)
  if m:
    return UserInputError(
        f"--vocab_size={vocab_size} is too large for this corpus (SentencePiece"
        f" can build at most {m.group(2)} pieces from it); pass "
        f"--vocab_size={m.group(2)} or less, or give it more text")
  m = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", msg)
  if m:
    return UserInputError(
        f"--vocab_size={vocab_size} is too small: the corpus's characters and "
        f"special tokens need {m.group(2)} pieces; pass a larger --vocab_size")
  first = " ".join(msg.split())[:300] or type(e).__name__
  return UserInputError(f"SentencePiece training failed: {first}; check "
                        f"--input and --vocab_size")


def _write_local(out: epath.Path, files: dict[str, bytes],
                 overwrite: bool) -> None:
  """Writes `files` into a temp dir beside `out`, then renames it to `out`."""
  parent = out.parent
  parent.mkdir(parents=True, exist_ok=True)
  tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
  tmp = parent / f".{out.name}.tmp-{tag}"
  tmp.mkdir()
  try:
    for name, data in files.items():
      (tmp / name).write_bytes(data)
    _check_output(out, overwrite)
    old = None
    if out.exists():
      old = parent / f".{out.name}.old-{tag}"
      os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
      shutil.rmtree(old)
  except BaseException:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
    raise


def _write_remote(out: epath.Path, files: dict[str, bytes],
                  overwrite: bool) -> None:
  """Object stores: each file goes to a temp name then is renamed; the model
  (the file `load_tokenizer` looks for) is renamed last."""
  _check_output(out, overwrite)
  out.mkdir(parents=True, exist_ok=True)
  names = [n for n in files if n != MODEL_FILE] + [MODEL_FILE]
  for name in names:
    tmp = out / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_bytes(files[name])
    tmp.replace(out / name)


def train_vocab(input_globs: str | Sequence[str],
                output_dir: str,
                vocab_size: int = 30522,
                model_type: str = "unigram",
                lower_case: bool = True,
                max_sentences: int = 2_000_000,
                seed: int = 0,
                *,
                overwrite: bool = False,
                character_coverage: float = 0.9995,
                verbose: bool = False) -> str:
  """Trains a SentencePiece vocab with the five special tokens at ids 0..4.

  Args:
    input_globs: comma-separated globs (or a list of them) of UTF-8 text files,
      one sentence or paragraph per line; local or gs://.
    output_dir: the directory to create (must not exist or be empty unless
      `overwrite`).
    vocab_size: number of pieces, including the five special tokens.
    model_type: 'unigram' or 'bpe'.
    lower_case: case-fold while normalizing ('nmt_nfkc_cf'; else 'nmt_nfkc').
    max_sentences: train on a seeded sample of at most this many lines.
    seed: seed of that sample (and of SentencePiece's generator).
    overwrite: replace a non-empty `output_dir`.
    character_coverage: fraction of characters the vocab must cover; the
      rarest remaining characters become [UNK].
    verbose: print a one-line summary.

  Returns:
    The path of `output_dir`/spm.model.

  Raises:
    UserInputError: bad arguments, missing/empty input, an existing output,
      or a vocab size the corpus cannot support.
  """
  start = time.time()
  if model_type not in MODEL_TYPES:
    raise UserInputError(f"--model_type={model_type!r} is not one of "
                         f"{', '.join(MODEL_TYPES)}")
  if vocab_size <= len(tokenization.SPECIAL_TOKENS):
    raise UserInputError(f"--vocab_size={vocab_size} is too small; it must "
                         f"exceed the {len(tokenization.SPECIAL_TOKENS)} "
                         f"special tokens (30522 is BERT's size)")
  if max_sentences < 1:
    raise UserInputError(f"--max_sentences={max_sentences} must be at least 1")
  if not output_dir:
    raise UserInputError("no output directory given; pass --output=DIR")
  out = epath.Path(output_dir)
  _check_output(out, overwrite)
  files = expand_globs(input_globs)
  sentences, total = sample_sentences(iter_sentences(files), max_sentences,
                                      seed)
  if not sentences:
    raise UserInputError(
        f"--input {input_globs!r} matched {len(files)} file(s) with no "
        f"non-blank lines; pass text files with one sentence per line")

  rule = "nmt_nfkc_cf" if lower_case else "nmt_nfkc"
  model = io.BytesIO()
  spm.set_random_generator_seed(seed)
  try:
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type=model_type,
        vocab_size=vocab_size,
        character_coverage=character_coverage,
        normalization_rule_name=rule,
        pad_id=0, pad_piece=tokenization.PAD,
        unk_id=1, unk_piece=tokenization.UNK,
        bos_id=-1, eos_id=-1,
        control_symbols=[tokenization.CLS, tokenization.SEP,
                         tokenization.MASK],
        input_sentence_size=0,
        shuffle_input_sentence=False,
        max_sentence_length=4 * MAX_LINE_CHARS,
        num_threads=NUM_THREADS,
        hard_vocab_limit=True,
        minloglevel=2)
  except (RuntimeError, OSError, ValueError) as e:
    raise _training_error(e, vocab_size) from None
  model_bytes = model.getvalue()

  sp = spm.SentencePieceProcessor(model_proto=model_bytes)
  vocab_lines = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n"
                        for i in range(sp.get_piece_size()))
  info = {
      "model_file": MODEL_FILE,
      "fingerprint": tokenization.fingerprint_bytes(model_bytes),
      "vocab_size": sp.get_piece_size(),
      "model_type": model_type,
      "lower_case": lower_case,
      "normalization_rule_name": rule,
      "character_coverage": character_coverage,
      "max_sentences": max_sentences,
      "seed": seed,
      "num_threads": NUM_THREADS,
      "special_tokens": {t: sp.piece_to_id(t)
                         for t in tokenization.SPECIAL_TOKENS},
      "input_globs": (input_globs if isinstance(input_globs, str)
                      else list(input_globs)),
      "input_files": files,
      "num_input_sentences": total,
      "num_training_sentences": len(sentences),
      "sentencepiece_version": spm.__version__,
  }
  outputs = {
      VOCAB_FILE: vocab_lines.encode("utf-8"),
      INFO_FILE: (json.dumps(info, indent=2, ensure_ascii=False) +
                  "\n").encode("utf-8"),
      MODEL_FILE: model_bytes,
  }
  if "://" in os.fspath(out):
    _write_remote(out, outputs, overwrite)
  else:
    _write_local(out, outputs, overwrite)

  if verbose:
    sampled = (f" (sampled from {total})" if total > len(sentences) else "")
    print(f"vocab: {model_type} vocab of {sp.get_piece_size()} pieces from "
          f"{len(files)} file(s), {len(sentences)} sentences{sampled}, "
          f"{time.time() - start:.1f}s -> {out / MODEL_FILE} "
          f"(fingerprint {info['fingerprint']})", flush=True)
  return os.fspath(out / MODEL_FILE)


def _define_flags() -> None:
  """CLI flags (defined only when run as a program, to avoid clashes)."""
  flags.DEFINE_string("input", None, "Comma-separated globs of text files, "
                      "one sentence or paragraph per line (local or gs://).")
  flags.DEFINE_string("output", None, "Directory to write spm.model, "
                      "spm.vocab and vocab_info.json into.")
  flags.DEFINE_integer("vocab_size", 30522, "Number of pieces, including the "
                       "five special tokens.")
  flags.DEFINE_enum("model_type", "unigram", list(MODEL_TYPES),
                    "SentencePiece algorithm.")
  flags.DEFINE_boolean("lower_case", True, "Case-fold the text.")
  flags.DEFINE_integer("max_sentences", 2_000_000, "Train on a seeded sample "
                       "of at most this many lines.")
  flags.DEFINE_integer("seed", 0, "Seed of the sentence sample.")
  flags.DEFINE_float("character_coverage", 0.9995, "Fraction of characters "
                     "the vocab covers; the rarest others become [UNK].")
  flags.DEFINE_boolean("overwrite", False, "Replace a non-empty --output.")


def main(argv: Sequence[str]) -> None:
  if argv is not None and len(argv) > 1:
    raise UserInputError(f"unexpected arguments {' '.join(argv[1:])!r}; "
                         f"all options are --flags (see --help)")
  f = flags.FLAGS
  if not f.input:
    raise UserInputError("--input is required, e.g. --input='corpus/*.txt'")
  if not f.output:
    raise UserInputError("--output is required: the directory to write the "
                         "vocab into")
  train_vocab(f.input, f.output, vocab_size=f.vocab_size,
              model_type=f.model_type, lower_case=f.lower_case,
              max_sentences=f.max_sentences, seed=f.seed,
              overwrite=f.overwrite,
              character_coverage=f.character_coverage, verbose=True)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, but a bad flag is one `error:` line and exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {' '.join(str(e).split())}; see --help", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  _define_flags()
  app.run(lambda argv: run_cli(main, argv), flags_parser=_parse_flags)
