r"""Builds the pretraining dataset: text -> tokens -> examples -> ArrayRecord.

Usage:

  python -m electra_jax.data.build --input=corpus/*.txt --vocab=vocab/sp.model \
      --max_seq_length=128 --output_dir=data/pretrain [--num_workers=N] \
      [--seed=0] [--validation_fraction=0.01] [--overwrite]

  python -m electra_jax.data.build --tfds=NAME --tfds_text_key=text \
      [--tfds_split=train] [--tfds_data_dir=DIR] --vocab=... --output_dir=...

Text input: one sentence or paragraph per line, a blank line between documents
(UTF-8; invalid bytes become U+FFFD and are counted; CRLF is fine).  Inputs are
comma-separated globs (local or gs://), read through etils.epath.  A tfds input
(`--tfds`: a registered name, or the path of a prepared dataset directory) is
read as a random-access data source (ArrayRecord, no TensorFlow); each record's
text field is one document, its lines split at newlines.

The input is cut into work units: one per file, and files larger than ~24 MiB
into ~16 MiB ranges cut at blank lines (a document longer than that is cut at a
line; tfds input: ranges of records).  Each unit gets its own random Generator
seeded from (seed, unit index), so the output is identical for any
--num_workers (0 = no worker processes).  Worker processes (spawned) tokenize
and build examples (`electra_jax.data.examples`); the main process writes them
to tfds in unit order.  That writing (tfds' per-example serialization, ~100-150
us an example) bounds the throughput, so the default is one worker fewer than
the CPU count.  Whole documents go to the 'validation' split with probability
--validation_fraction, decided by a seeded hash of (unit index, document index);
when that picks none, the last document goes there, so validation is never
empty when there are two documents or more.

The dataset is written into a temporary directory beside --output_dir and
renamed into place at the end, so an interrupted build leaves nothing that looks
complete.  See `electra_jax.data.dataset` for the layout and for reading it.
"""

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import io
import multiprocessing
import os
import re
import sys
import tempfile
import time
from typing import Any, Iterator, Sequence
import uuid

from etils import epath
import numpy as np

from electra_jax import tokenization
from electra_jax.data import examples as examples_lib
from electra_jax.data import vocab as vocab_lib
from electra_jax.errors import UserInputError
from electra_jax.errors import run_cli

MIN_SEQ_LENGTH = 8
MAX_SEQ_LENGTH = 4096
DEFAULT_UNIT_BYTES = 16 << 20
_TOKENIZE_BATCH_LINES = 1024
_TOKENIZE_BATCH_CHARS = 1 << 20
_PROGRESS_EVERY_S = 5.0
_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")

_COUNT_KEYS = ("documents", "lines", "tokens", "tokens_in_examples",
               "long_lines_split", "invalid_utf8_lines", "bytes")


# ----------------------------------------------------------------------------
# Work units


@dataclasses.dataclass(frozen=True)
class _Unit:
  """A piece of input processed by one worker call."""
  index: int  # Global unit index: seeds the unit's RNG and its split hash.
  source: int  # Index of the input file (text) or 0 (tfds).
  path: str  # File path (text); unused for tfds.
  start: int  # Byte offset (text) or record index (tfds).
  end: int


@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
  name: str  # Registered name (optionally name:version) or a directory.
  split: str
  data_dir: str | None
  text_key: str


@dataclasses.dataclass(frozen=True)
class _WorkerSettings:
  vocab_path: str
  max_seq_length: int
  seed: int
  tfds: _TfdsSpec | None


def _find_cut(f, nominal: int, size: int, scan_limit: int) -> int:
  """A document boundary at or after byte `nominal` of an open binary file.

  Returns the offset just past the first blank line found at or after
  `nominal`; if none lies within `scan_limit` bytes, the start of the first line
  after `nominal` (the document is then split there); `size` if neither exists.
  """
  base = nominal - 1
  f.seek(base)
  buf = b""
  first_newline = None
  while True:
    block = f.read(1 << 20)
    if not block:
      break
    buf += block
    match = _BLANK_LINE.search(buf)
    if match:
      return base + match.end()
    if first_newline is None:
      i = buf.find(b"\n")
      if i >= 0:
        first_newline = base + i + 1
    if first_newline is not None and base + len(buf) - nominal > scan_limit:
      return first_newline
    j = buf.rfind(b"\n")
    if j >= 0:
      base += j
      buf = buf[j:]
    else:
      base += len(buf)
      buf = b""
  return first_newline if first_newline is not None else size


def _plan_text_units(files: Sequence[epath.Path], unit_bytes: int):
  """Splits files into byte ranges; returns (units, sizes)."""
  units, sizes = [], []
  for source, path in enumerate(files):
    size = path.stat().length
    sizes.append(size)
    cuts = [0]
    if size > unit_bytes + unit_bytes // 2:
      with path.open("rb") as f:
        pos = 0
        while size - pos > unit_bytes + unit_bytes // 2:
          cut = _find_cut(f, pos + unit_bytes, size, unit_bytes)
          if cut >= size:
            break
          cuts.append(cut)
          pos = cut
    cuts.append(size)
    for start, end in zip(cuts[:-1], cuts[1:]):
      units.append(_Unit(len(units), source, str(path), start, end))
  return units, sizes


def _open_tfds_source(spec: _TfdsSpec):
  """A random-access data source for the tfds input (ArrayRecord, no TF)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from electra_jax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  looks_like_path = "/" in spec.name or spec.name.startswith(".")
  try:
    if looks_like_path:
      version_dir = dataset_lib.find_version_dir(spec.name)
      if version_dir is None:
        raise UserInputError(
            f"--tfds={spec.name} is not a prepared tfds dataset directory (no "
            f"dataset_info.json in it or in a version dir below it)")
      builder = tfds.builder_from_directory(str(version_dir))
    else:
      builder = tfds.builder(spec.name, data_dir=spec.data_dir)
    if spec.split not in builder.info.splits:
      raise UserInputError(
          f"tfds dataset {spec.name} has no split {spec.split!r} (it has "
          f"{', '.join(sorted(builder.info.splits)) or 'none: not prepared'}); "
          f"pass --tfds_split")
    return builder.as_data_source(split=spec.split)
  except UserInputError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserInputError(
        f"cannot read tfds dataset {spec.name} split {spec.split} without "
        f"TensorFlow ({msg}); it must be prepared in array_record format "
        f"(pass --tfds_data_dir, or the dataset's directory as --tfds)"
    ) from None


def _record_text(record: Any, key: str) -> Any:
  if not isinstance(record, dict) or key not in record:
    keys = ", ".join(sorted(record)) if isinstance(record, dict) else "?"
    raise UserInputError(f"tfds records have no field {key!r} (fields: "
                         f"{keys}); pass --tfds_text_key")
  value = record[key]
  if isinstance(value, np.ndarray) and value.shape == ():
    value = value.item()
  if not isinstance(value, (bytes, str)):
    raise UserInputError(f"tfds field {key!r} is not text (got "
                         f"{type(value).__name__}); pass --tfds_text_key")
  return value


def _plan_tfds_units(spec: _TfdsSpec, unit_bytes: int) -> tuple[list[_Unit],
                                                                 int]:
  """Splits the records into ranges of about unit_bytes of text."""
  source = _open_tfds_source(spec)
  n = len(source)
  if n == 0:
    raise UserInputError(f"tfds dataset {spec.name} split {spec.split} is "
                         f"empty; nothing to build from")
  sample = [_record_text(source[i], spec.text_key) for i in range(min(n, 64))]
  mean = max(1.0, sum(len(t) for t in sample) / len(sample))
  per_unit = max(1, int(unit_bytes / mean))
  units = [_Unit(i, 0, spec.name, s, min(n, s + per_unit))
           for i, s in enumerate(range(0, n, per_unit))]
  return units, n


# ----------------------------------------------------------------------------
# Worker side (runs in spawned processes; must not import tensorflow_datasets
# unless the input is tfds)

_worker_state: dict[str, Any] = {}


def _init_worker(settings: _WorkerSettings) -> None:
  _worker_state.clear()
  _worker_state["settings"] = settings
  _worker_state["tokenizer"] = tokenization.load_tokenizer(settings.vocab_path)
  if settings.tfds is not None:
    _worker_state["tfds_source"] = _open_tfds_source(settings.tfds)


def _decode(raw: bytes) -> tuple[str, int]:
  try:
    return raw.decode("utf-8"), 0
  except UnicodeDecodeError:
    return raw.decode("utf-8", errors="replace"), 1


def _text_unit_lines(unit: _Unit, stats: collections.Counter):
  """Yields the unit's lines (str) with '' marking document boundaries."""
  with epath.Path(unit.path).open("rb") as f:
    f.seek(unit.start)
    data = f.read(unit.end - unit.start)
  stats["bytes"] += len(data)
  try:
    lines = data.decode("utf-8").split("\n")
  except UnicodeDecodeError:
    lines = []
    for raw in data.split(b"\n"):
      line, bad = _decode(raw)
      stats["invalid_utf8_lines"] += bad
      lines.append(line)
  if unit.start == 0 and lines and lines[0].startswith("\ufeff"):
    lines[0] = lines[0][1:]  # Byte-order mark.
  return lines


def _tfds_unit_lines(unit: _Unit, stats: collections.Counter):
  source = _worker_state["tfds_source"]
  key = _worker_state["settings"].tfds.text_key
  lines = []
  for start in range(unit.start, unit.end, 256):
    indices = list(range(start, min(unit.end, start + 256)))
    if hasattr(source, "__getitems__"):
      records = source.__getitems__(indices)
    else:
      records = [source[i] for i in indices]
    for record in records:
      text = _record_text(record, key)
      if isinstance(text, bytes):
        stats["bytes"] += len(text)
        text, bad = _decode(text)
        stats["invalid_utf8_lines"] += bad
      else:
        stats["bytes"] += len(text.encode("utf-8", errors="replace"))
      if not text.strip():
        stats["empty_records"] += 1
      # Each record is one document: blank lines inside it do not split it.
      lines.extend(line for line in text.split("\n") if line.strip())
      lines.append("")
  return lines


def _process_unit(unit: _Unit) -> dict[str, Any]:
  """Tokenizes one unit and builds its examples.

  Returns:
    {'input_ids', 'input_mask', 'segment_ids'}: int32 [n, L] arrays;
    'document': int32 [n], the index within the unit of each example's
    document; 'stats': counts.
  """
  settings: _WorkerSettings = _worker_state["settings"]
  tok = _worker_state["tokenizer"]
  max_len = settings.max_seq_length
  stats = collections.Counter()
  if settings.tfds is None:
    raw_lines = _text_unit_lines(unit, stats)
  else:
    raw_lines = _tfds_unit_lines(unit, stats)

  texts, doc_of_text = [], []
  doc, in_doc = 0, False
  for line in raw_lines:
    line = line.strip()
    if not line:
      if in_doc:
        doc += 1
        in_doc = False
      continue
    texts.append(line)
    doc_of_text.append(doc)
    in_doc = True
  del raw_lines
  stats["documents"] = doc + int(in_doc)
  stats["lines"] = len(texts)

  rng = np.random.default_rng([settings.seed, unit.index])
  builder = examples_lib.ExampleBuilder(max_len, rng)
  packed, documents = [], []
  pending: list[examples_lib.Segments] = []
  pending_docs: list[int] = []

  def emit(segments, d):
    pending.extend(segments)
    pending_docs.extend([d] * len(segments))

  def pack():
    if pending:
      packed.append(examples_lib.pack_examples(
          pending, max_len, cls_id=tok.cls_id, sep_id=tok.sep_id,
          pad_id=tok.pad_id))
      documents.append(np.asarray(pending_docs, dtype=np.int32))
      for a, b in pending:
        stats["tokens_in_examples"] += len(a) + len(b)
      pending.clear()
      pending_docs.clear()

  current_doc = 0
  start = 0
  while start < len(texts):
    end, chars = start, 0
    while (end < len(texts) and end - start < _TOKENIZE_BATCH_LINES and
           chars < _TOKENIZE_BATCH_CHARS):
      chars += len(texts[end])
      end += 1
    for j, ids in enumerate(tok.encode_batch(texts[start:end])):
      d = doc_of_text[start + j]
      if d != current_doc:
        emit(builder.end_document(), current_doc)
        current_doc = d
      stats["tokens"] += len(ids)
      emit(builder.add_line(ids), d)
    pack()
    start = end
  emit(builder.end_document(), current_doc)
  pack()
  stats["long_lines_split"] = builder.long_lines

  if packed:
    result = {k: np.concatenate([p[k] for p in packed])
              for k in examples_lib.FEATURES}
    result["document"] = np.concatenate(documents)
  else:
    result = {k: np.zeros((0, max_len), np.int32)
              for k in examples_lib.FEATURES}
    result["document"] = np.zeros((0,), np.int32)
  result["stats"] = dict(stats)
  return result


# ----------------------------------------------------------------------------
# Main side


def _is_validation(seed: int, unit_index: int, document: int,
                   fraction: float) -> bool:
  if fraction <= 0:
    return False
  digest = hashlib.blake2b(f"{seed}/{unit_index}/{document}".encode(),
                           digest_size=8).digest()
  return int.from_bytes(digest, "little") / 2.0**64 < fraction


def _run_units(units: Sequence[_Unit], settings: _WorkerSettings,
               num_workers: int) -> Iterator[tuple[_Unit, dict[str, Any]]]:
  """Yields (unit, result) in unit order, computed by up to num_workers."""
  if num_workers <= 0:
    _init_worker(settings)
    try:
      for unit in units:
        yield unit, _process_unit(unit)
    finally:
      _worker_state.clear()
    return
  ctx = multiprocessing.get_context("spawn")
  pool = ctx.Pool(num_workers, initializer=_init_worker, initargs=(settings,))
  try:
    window = collections.deque()
    todo = iter(units)
    for unit in todo:
      window.append((unit, pool.apply_async(_process_unit, (unit,))))
      if len(window) >= 2 * num_workers:
        break
    while window:
      unit, result = window.popleft()
      out = result.get()
      nxt = next(todo, None)
      if nxt is not None:
        window.append((nxt, pool.apply_async(_process_unit, (nxt,))))
      yield unit, out
    pool.close()
    pool.join()
  finally:
    pool.terminate()


class _Progress:
  """Prints a progress line every few seconds."""

  def __init__(self, out, total_sources: int, total_bytes: int | None,
               source_word: str):
    self._out = out
    self._total_sources = total_sources
    self._total_bytes = total_bytes
    self._word = source_word
    self._start = time.monotonic()
    self._last = self._start
    self.sources_done = 0
    self.bytes_done = 0

  @property
  def elapsed(self) -> float:
    return time.monotonic() - self._start

  def maybe_print(self, train: int, validation: int, force: bool = False):
    now = time.monotonic()
    if not force and now - self._last < _PROGRESS_EVERY_S:
      return
    self._last = now
    mb = self.bytes_done / 1e6
    total = (f"/{self._total_bytes / 1e6:.1f}" if self._total_bytes else "")
    print(f"[build] {self._word} {self.sources_done}/{self._total_sources} | "
          f"{mb:.1f}{total} MB | {mb / max(self.elapsed, 1e-9):.2f} MB/s | "
          f"examples {train:,} train + {validation:,} validation | "
          f"{self.elapsed:.0f} s", file=self._out, flush=True)


class _Producer:
  """Runs the units and routes whole documents to train or validation.

  The train generator drives everything: it yields train examples as units
  finish (in unit order) and spills validation examples to a file, which the
  validation generator then reads back.
  """

  def __init__(self, *, units, settings, num_workers, validation_fraction,
               spill_path: str, progress: _Progress,
               source_units: collections.Counter, text_input: bool,
               metadata: dict[str, Any]):
    self._units = units
    self._settings = settings
    self._num_workers = num_workers
    self._fraction = validation_fraction
    self._spill_path = spill_path
    self._progress = progress
    self._text_input = text_input
    self._source_units_left = collections.Counter(source_units)
    self._metadata = metadata
    self.counts = collections.Counter()
    self.source_documents = collections.Counter()
    self.num_train = 0
    self.num_validation = 0
    self.train_done = False
    self._generators = []

  def split_generators(self) -> dict[str, Iterator]:
    gens = {"train": self._train()}
    if self._fraction > 0:
      gens["validation"] = self._validation()
    self._generators.extend(gens.values())
    return gens

  def close(self) -> None:
    """Stops the generators (and so the worker pool) if tfds left them."""
    for gen in self._generators:
      gen.close()

  def _train(self):
    pending = None  # (arrays, doc flag) of the last document seen so far.
    documents_with_examples = 0
    spill = open(self._spill_path, "wb")
    key = 0

    def route(arrays, is_val):
      nonlocal key
      if is_val:
        stacked = np.stack([arrays[k] for k in examples_lib.FEATURES], axis=1)
        spill.write(np.ascontiguousarray(stacked, dtype=np.int32).tobytes())
        self.num_validation += len(stacked)
        return
      for i in range(len(arrays["input_ids"])):
        yield key, {k: arrays[k][i] for k in examples_lib.FEATURES}
        key += 1
        self.num_train += 1
        if not i % 1024:
          self._progress.maybe_print(self.num_train, self.num_validation)

    with spill:
      for unit, result in _run_units(self._units, self._settings,
                                     self._num_workers):
        for k, v in result["stats"].items():
          self.counts[k] += v
        self.source_documents[unit.source] += result["stats"].get(
            "documents", 0)
        docs = result["document"]
        if len(docs):
          # Boundaries of each document's run of examples.
          cuts = np.flatnonzero(np.diff(docs)) + 1
          starts = np.concatenate([[0], cuts])
          ends = np.concatenate([cuts, [len(docs)]])
          documents_with_examples += len(starts)
          runs = []
          for s, e in zip(starts, ends):
            arrays = {k: result[k][s:e] for k in examples_lib.FEATURES}
            flag = _is_validation(self._settings.seed, unit.index,
                                  int(docs[s]), self._fraction)
            runs.append((arrays, flag))
          if pending is not None:
            yield from route(*pending)
          for arrays, flag in runs[:-1]:
            yield from route(arrays, flag)
          pending = runs[-1]
        self._progress.bytes_done += result["stats"].get("bytes", 0)
        self._source_units_left[unit.source] -= 1
        if self._source_units_left[unit.source] == 0:
          self._progress.sources_done += 1
        self._progress.maybe_print(self.num_train, self.num_validation)
      if pending is not None:
        arrays, flag = pending
        if (self._fraction > 0 and self.num_validation == 0 and
            documents_with_examples >= 2):
          flag = True
        yield from route(arrays, flag)
    if self.num_train == 0:
      if documents_with_examples == 0:
        raise UserInputError(
            "the inputs hold no text (every input is empty or blank); check "
            "--input / --tfds")
      if documents_with_examples == 1:
        raise UserInputError(
            "the input holds a single document, and it was held out for "
            "validation; put blank lines between documents or pass "
            "--validation_fraction=0")
      raise UserInputError(
          f"all {documents_with_examples} documents were held out for "
          f"validation; lower --validation_fraction")
    self.train_done = True
    self._finish_metadata()

  def _finish_metadata(self):
    counts = {k: int(self.counts.get(k, 0)) for k in _COUNT_KEYS}
    if self._text_input:
      counts["files"] = len(self._source_units_left)
      counts["empty_files"] = sum(
          1 for s in self._source_units_left if self.source_documents[s] == 0)
    else:
      counts["records"] = int(self._metadata.get("records", 0))
      counts["empty_records"] = int(self.counts.get("empty_records", 0))
    counts["examples"] = {"train": self.num_train}
    if self._fraction > 0:
      counts["examples"]["validation"] = self.num_validation
    self._metadata["counts"] = counts

  def _validation(self):
    assert self.train_done, "tfds must generate 'train' before 'validation'"
    if self.num_validation == 0:
      raise UserInputError(
          "the input holds a single document, so none can be held out for "
          "validation; put blank lines between documents or pass "
          "--validation_fraction=0")
    max_len = self._settings.max_seq_length
    data = np.memmap(self._spill_path, dtype=np.int32, mode="r")
    data = data.reshape(-1, len(examples_lib.FEATURES), max_len)
    for i in range(len(data)):
      row = np.array(data[i])
      yield i, {k: row[j] for j, k in enumerate(examples_lib.FEATURES)}
    del data


def _check_output(output: epath.Path, overwrite: bool) -> None:
  """Raises unless `output` may be (re)placed."""
  from electra_jax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  if not output.exists():
    return
  if not output.is_dir():
    raise UserInputError(f"--output_dir {output} exists and is not a "
                         f"directory; choose another path")
  if not any(True for _ in output.iterdir()):
    return  # An empty directory is fine.
  if not overwrite:
    raise UserInputError(f"--output_dir {output} already exists; pass "
                         f"--overwrite to replace it or choose another path")
  if not dataset_lib.is_built_dataset(output):
    raise UserInputError(
        f"refusing to --overwrite {output}: it is not a dataset built by "
        f"electra_jax.data.build; remove it yourself or choose another path")


def _rmtree(path: epath.Path) -> None:
  if path.exists():
    path.rmtree()


def build_dataset(inputs: str | Sequence[str] | None,
                  vocab_path: str,
                  output_dir: str,
                  max_seq_length: int = 128,
                  num_workers: int | None = None,
                  seed: int = 0,
                  validation_fraction: float = 0.01,
                  tfds_name: str | None = None,
                  tfds_text_key: str = "text",
                  tfds_split: str = "train",
                  overwrite: bool = False,
                  *,
                  tfds_data_dir: str | None = None,
                  unit_bytes: int = DEFAULT_UNIT_BYTES,
                  out=None) -> str:
  """Builds the pretraining dataset (see the module doc).

  Args:
    inputs: text globs (a comma-separated string or a list), local or gs://;
      None/empty when `tfds_name` is given.
    vocab_path: a SentencePiece .model, a WordPiece vocab.txt, or a directory
      holding one.
    output_dir: where the dataset goes (must not exist unless `overwrite`, or
      be an empty directory).
    max_seq_length: example length, 8..4096.
    num_workers: tokenizing worker processes (default: CPU count - 1; 0 = all
      in this process).  The output does not depend on it.
    seed: seeds the example builder and the validation split.
    validation_fraction: probability that a document is held out, in [0, 1);
      0 writes no validation split.
    tfds_name: read text from this tfds dataset (registered name, or the path
      of a prepared dataset directory) instead of `inputs`.
    tfds_text_key: the record field holding the text.
    tfds_split: the tfds split to read.
    overwrite: replace an existing dataset at `output_dir`.
    tfds_data_dir: data_dir to find `tfds_name` in (default: tfds' default).
    unit_bytes: size of a work unit (changing it changes the output).
    out: stream for progress lines (default stdout).

  Returns:
    output_dir.

  Raises:
    UserInputError: bad arguments or inputs (see the messages).
  """
  # tfds is imported here, not at module level: worker processes import this
  # module and need neither.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from electra_jax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top

  out = out if out is not None else sys.stdout
  t0 = time.monotonic()
  if isinstance(inputs, str):
    inputs = [p.strip() for p in inputs.split(",") if p.strip()]
  inputs = list(inputs or [])
  if tfds_name and inputs:
    raise UserInputError("pass either --input or --tfds, not both")
  if not tfds_name and not inputs:
    raise UserInputError("no input given; pass --input=GLOB[,GLOB] (text "
                         "files) or --tfds=NAME")
  if not MIN_SEQ_LENGTH <= int(max_seq_length) <= MAX_SEQ_LENGTH:
    raise UserInputError(f"--max_seq_length={max_seq_length} is out of range; "
                         f"use {MIN_SEQ_LENGTH}..{MAX_SEQ_LENGTH} (128 or 512 "
                         f"are usual)")
  max_seq_length = int(max_seq_length)
  if not 0 <= validation_fraction < 1:
    raise UserInputError(f"--validation_fraction={validation_fraction} must be "
                         f"in [0, 1) (0.01 is usual; 0 = no validation split)")
  if num_workers is not None and num_workers < 0:
    raise UserInputError(f"--num_workers={num_workers} must be >= 0")
  if seed < 0:
    raise UserInputError(f"--seed={seed} must be >= 0")
  if not output_dir:
    raise UserInputError("no --output_dir given")
  output = epath.Path(os.path.expanduser(str(output_dir)))
  _check_output(output, overwrite)

  tok = tokenization.load_tokenizer(vocab_path)
  if tok.vocab_size >= 2**31:
    raise UserInputError(f"vocab {vocab_path} is too large for int32 ids")

  if tfds_name:
    spec = _TfdsSpec(tfds_name, tfds_split, tfds_data_dir, tfds_text_key)
    units, num_records = _plan_tfds_units(spec, unit_bytes)
    input_desc = {"tfds": tfds_name, "tfds_split": tfds_split,
                  "tfds_text_key": tfds_text_key, "records": num_records}
    # Progress counts record ranges as "sources".
    units = [dataclasses.replace(u, source=u.index) for u in units]
    source_units = collections.Counter({u.index: 1 for u in units})
    progress = _Progress(out, len(units), None, "record ranges")
  else:
    spec = None
    files = [epath.Path(f) for f in vocab_lib.expand_globs(inputs)]
    units, sizes = _plan_text_units(files, unit_bytes)
    if not any(sizes):
      raise UserInputError(
          f"all {len(files)} input file(s) are empty: "
          f"{', '.join(str(f) for f in files[:3])}"
          f"{' ...' if len(files) > 3 else ''}; check --input")
    input_desc = {"inputs": inputs, "files": [str(f) for f in files]}
    source_units = collections.Counter(u.source for u in units)
    progress = _Progress(out, len(files), sum(sizes), "files")

  if num_workers is None:  # Leave a core to the main process (it writes).
    num_workers = max(1, (os.cpu_count() or 2) - 1)
  workers = min(num_workers, len(units))
  main_file = getattr(sys.modules.get("__main__"), "__file__", None)
  if workers and main_file and not os.path.exists(main_file):
    # Spawned workers re-import __main__ and would fail (e.g. `python -`).
    print(f"[build] __main__ ({main_file}) is not a file, so worker processes "
          f"cannot start; tokenizing in this process", file=out, flush=True)
    workers = 0
  settings = _WorkerSettings(str(tok.path), max_seq_length, int(seed), spec)
  vocab_file = epath.Path(tok.path)
  metadata = {
      "format": dataset_lib.FORMAT,
      "vocab_fingerprint": tok.fingerprint,
      "vocab_kind": tok.kind,
      "vocab_file": f"{dataset_lib.VOCAB_SUBDIR}/{vocab_file.name}",
      "vocab_size": int(tok.vocab_size),
      "vocab_source": str(vocab_file),
      "special_ids": {"pad": tok.pad_id, "unk": tok.unk_id, "cls": tok.cls_id,
                      "sep": tok.sep_id, "mask": tok.mask_id},
      "max_seq_length": max_seq_length,
      "seed": int(seed),
      "validation_fraction": float(validation_fraction),
      "unit_bytes": int(unit_bytes),
      **input_desc,
  }

  output.parent.mkdir(parents=True, exist_ok=True)
  tmp = output.parent / f".{output.name}.incomplete-{uuid.uuid4().hex[:8]}"
  tmp.mkdir()
  producer = None
  spill_dir = tempfile.TemporaryDirectory(prefix="electra_build_")
  try:
    builder = dataset_lib.ElectraPretraining(
        max_seq_length=max_seq_length, metadata=metadata,
        split_generators=lambda: producer.split_generators(),
        data_dir=str(tmp), file_format="array_record")
    # The producer adds the counts to the builder's metadata (metadata.json)
    # once the train split is done.
    producer = _Producer(
        units=units, settings=settings, num_workers=workers,
        validation_fraction=validation_fraction,
        spill_path=os.path.join(spill_dir.name, "validation.spill"),
        progress=progress,
        source_units=source_units, text_input=spec is None,
        metadata=builder.info.metadata)
    print(f"[build] {len(units)} work unit(s), {workers} worker(s), "
          f"max_seq_length {max_seq_length}, vocab {vocab_file.name} "
          f"({tok.kind}, {tok.vocab_size} ids)", file=out, flush=True)
    tfds.disable_progress_bar()
    with contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare(
          download_dir=str(tmp / "downloads"),
          download_config=tfds.download.DownloadConfig())
    version_dir = tmp / dataset_lib.DATASET_NAME / dataset_lib.VERSION
    vocab_dir = version_dir / dataset_lib.VOCAB_SUBDIR
    vocab_dir.mkdir()
    vocab_file.copy(vocab_dir / vocab_file.name)
    _rmtree(tmp / "downloads")

    _check_output(output, overwrite)
    old = None
    if output.exists():
      old = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
      output.rename(old)
    tmp.rename(output)
    if old is not None:
      _rmtree(old)
  except BaseException:
    _rmtree(tmp)
    raise
  finally:
    if producer is not None:
      producer.close()
    spill_dir.cleanup()

  counts = builder.info.metadata["counts"]
  elapsed = time.monotonic() - t0
  mb = counts["bytes"] / 1e6
  lost = counts["tokens"] - counts["tokens_in_examples"]
  val = counts["examples"].get("validation")
  print(f"[build] done in {elapsed:.1f} s ({mb:.1f} MB, {mb / elapsed:.2f} "
        f"MB/s): {_inputs_summary(counts)}, "
        f"{counts['documents']:,} documents, {counts['lines']:,} lines, "
        f"{counts['tokens']:,} tokens ({lost:,} truncated) -> "
        f"{counts['examples']['train']:,} train"
        f"{f' + {val:,} validation' if val is not None else ''} examples; "
        f"{counts['invalid_utf8_lines']:,} lines with invalid UTF-8 replaced; "
        f"{counts['long_lines_split']:,} long lines split; wrote {output}",
        file=out, flush=True)
  return str(output_dir)


def _inputs_summary(counts: dict[str, Any]) -> str:
  if "files" in counts:
    return f"{counts['files']} file(s) ({counts['empty_files']} empty)"
  return f"{counts['records']:,} records ({counts['empty_records']:,} empty)"


# ----------------------------------------------------------------------------
# CLI


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m electra_jax.data.build",
      description="Build the ELECTRA pretraining dataset (tfds ArrayRecord).",
      allow_abbrev=False)
  parser.add_argument("--input", default="",
                      help="comma-separated globs of text files (local or "
                      "gs://): one sentence/paragraph a line, blank line "
                      "between documents")
  parser.add_argument("--vocab", required=True,
                      help="SentencePiece .model, WordPiece vocab.txt, or a "
                      "directory holding one")
  parser.add_argument("--max_seq_length", type=int, default=128)
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--num_workers", type=int, default=None,
                      help="tokenizing worker processes (default: CPU "
                      "count - 1; 0: in the main process); the output does "
                      "not depend on it")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--validation_fraction", type=float, default=0.01)
  parser.add_argument("--tfds", default=None,
                      help="read text from this tfds dataset (name or "
                      "prepared directory) instead of --input")
  parser.add_argument("--tfds_text_key", default="text")
  parser.add_argument("--tfds_split", default="train")
  parser.add_argument("--tfds_data_dir", default=None)
  parser.add_argument("--overwrite", action="store_true")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  build_dataset(
      args.input, args.vocab, args.output_dir,
      max_seq_length=args.max_seq_length, num_workers=args.num_workers,
      seed=args.seed, validation_fraction=args.validation_fraction,
      tfds_name=args.tfds, tfds_text_key=args.tfds_text_key,
      tfds_split=args.tfds_split, overwrite=args.overwrite,
      tfds_data_dir=args.tfds_data_dir)


if __name__ == "__main__":
  run_cli(main)
