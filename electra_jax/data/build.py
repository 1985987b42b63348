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
--num_workers (0 = no worker processes; default: the CPU count; a single unit
is always processed in the main process).  Whole documents go to the
'validation' split with probability --validation_fraction, decided by a seeded
hash of (unit index, document index); when that picks none, the last document
goes there, so validation is never empty when there are two documents or more.

Worker processes (spawned; forked from the CLI where `_start_method` finds it
safe; biggest units first) do all the work of a unit: tokenize whole batches of
lines, build the examples (`electra_jax.data.examples`), serialize them as
tf.train.Example records (`electra_jax.data.records`: vectorised, ~20x faster
than tfds' per-example serializer) and spill them to a per-unit file.  The main
process collects each unit's counts and record ranges per split and, while the
split can still be a single shard (under 128 MiB), copies its records from the
spill into that shard as the units finish, in input order.  Splits too big for
one shard are written at the end instead, one shard a job, in parallel.  Either
way the shard count and boundaries, file names and ArrayRecord options are
those tfds' own writer uses, so a dataset reads back exactly as before; its
files are byte-identical for any --num_workers and from one run to the next
(tfds' serializer wrote the features in a per-process random order).  tfds then
writes dataset_info.json and metadata.json.  The spill, beside the output,
takes about as much disk space as the dataset until the end.

The dataset is written into a temporary directory beside --output_dir and
renamed into place at the end, so an interrupted build leaves nothing that looks
complete.  See `electra_jax.data.dataset` for the layout and for reading it.

This module runs the workers and routes their output; cutting the input into
units and reading their text is `electra_jax.data.build_units`, a worker's job on
one unit `electra_jax.data.build_worker`, writing the shards
`electra_jax.data.build_shards`, and checking, filling and swapping in the output
directory `electra_jax.data.build_output`.
"""

import argparse
import collections
import contextlib
import dataclasses
import io
import multiprocessing
import os
import sys
import threading
import time
from typing import Any, Iterator, Sequence
import uuid

from etils import epath

from electra_jax import tokenization
from electra_jax.data import build_output as output_lib
from electra_jax.data import build_shards as shards_lib
from electra_jax.data import build_units as units_lib
from electra_jax.data import build_worker as worker_lib
from electra_jax.data import vocab as vocab_lib
from electra_jax.errors import UserInputError
from electra_jax.errors import run_cli

MIN_SEQ_LENGTH = 8
MAX_SEQ_LENGTH = 4096
DEFAULT_UNIT_BYTES = 16 << 20
_PROGRESS_EVERY_S = 5.0

_COUNT_KEYS = ("documents", "lines", "tokens", "tokens_in_examples",
               "long_lines_split", "invalid_utf8_lines", "bytes")


# ----------------------------------------------------------------------------
# Main side


def _os_threads() -> int | None:
  """This process's OS-level thread count (Linux), else None."""
  try:
    return len(os.listdir("/proc/self/task"))
  except OSError:
    return None


# numpy's BLAS threads (fork-safe) are running by now.
_THREADS_AT_IMPORT = _os_threads()


def _start_method(fork_workers: bool, text_input: bool) -> str:
  """How to start worker processes: 'fork' where asked and safe, else 'spawn'.

  Forked workers start at once and share this process's imports (a spawned
  one re-imports numpy, SentencePiece etc.: ~0.3 CPU s).  But a child forked
  while other threads run can hang on a lock one of them held: fork only on
  Linux, for text input (reading a tfds input starts ArrayRecord reader
  threads), with no thread started since this module was imported and no
  JAX, TensorFlow or PyTorch loaded.  The CLI asks for fork; library callers
  (the trainer builds its dataset in a process running JAX) get spawn.
  """
  threads = _os_threads()
  if (not fork_workers or not text_input or sys.platform != "linux" or
      threading.active_count() > 1 or threads is None or
      _THREADS_AT_IMPORT is None or threads > _THREADS_AT_IMPORT or
      any(name in sys.modules for name in ("jax", "tensorflow", "torch"))):
    return "spawn"
  return "fork"


class _Workers:
  """Runs jobs in worker processes, or in this process (0 workers)."""

  def __init__(self, settings: worker_lib.WorkerSettings, num_workers: int,
               start_method: str):
    self._pool = None
    if num_workers <= 0:
      worker_lib.init_worker(settings)
      return
    ctx = multiprocessing.get_context(start_method)
    self._pool = ctx.Pool(num_workers, initializer=worker_lib.init_worker,
                          initargs=(settings,))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self._pool is None:
      worker_lib.worker_state.clear()
      return
    if exc[0] is None:
      self._pool.close()
      self._pool.join()
    self._pool.terminate()

  def run(self, fn, args: Sequence[Any]) -> Iterator[Any]:
    """Starts fn(arg) for every arg; yields the results as they complete.

    The jobs start in the order given (without worker processes, one by one
    as the results are taken).
    """
    if self._pool is None:
      return (fn(arg) for arg in args)
    return self._pool.imap_unordered(worker_lib.call, [(fn, a) for a in args])


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


class _Router:
  """Puts the units' record ranges into the splits, in input order.

  Give it every unit's result, in unit order, then call `finish`.  The train
  split's latest piece waits until the next one comes: when the hash picked no
  document for validation, the input's last document (a piece of its own, see
  `_segments`) goes there instead.
  """

  def __init__(self, validation_fraction: float, on_piece):
    self._fraction = validation_fraction
    self._on_piece = on_piece  # Called with (split name, piece), in order.
    self._splits = {"train": [], "validation": []}
    self._documents = 0  # Documents with examples so far.
    self._held = None

  def add(self, unit_index: int, result: dict[str, Any]) -> None:
    self._documents += result["documents_with_examples"]
    for start, end, num_bytes, is_validation in result["segments"]:
      piece = shards_lib.Piece(unit_index, start, end, num_bytes)
      if is_validation:
        self._put("validation", piece)
        continue
      if self._held is not None:
        self._put("train", self._held)
      self._held = piece

  def finish(self) -> dict[str, list[shards_lib.Piece]]:
    """Every record's place: split name -> pieces, in input order.

    Raises:
      UserInputError: a split would be empty.
    """
    if self._held is not None:
      last_to_validation = (self._fraction > 0 and
                            not self._splits["validation"] and
                            self._documents >= 2)
      self._put("validation" if last_to_validation else "train", self._held)
      self._held = None
    _check_splits(self._splits, self._documents, self._fraction)
    if self._fraction <= 0:
      return {"train": self._splits["train"]}
    return dict(self._splits)

  def _put(self, name: str, piece: shards_lib.Piece) -> None:
    self._splits[name].append(piece)
    self._on_piece(name, piece)


def _collect(units: Sequence[units_lib.Unit],
             running: Iterator[dict[str, Any]], router: _Router,
             progress: _Progress) -> dict[int, dict[str, Any]]:
  """Unit index -> its `worker_lib.process_unit` result, as `running` yields them.

  Passes the results on to `router` in unit order as soon as they can be.
  """
  by_index = {u.index: u for u in units}
  in_order = sorted(by_index)
  units_left = collections.Counter(u.source for u in units)
  results, split_counts, routed = {}, collections.Counter(), 0
  for result in running:
    unit = by_index[result["unit"]]
    results[unit.index] = result
    while routed < len(in_order) and in_order[routed] in results:
      router.add(in_order[routed], results[in_order[routed]])
      routed += 1
    for start, end, _, is_validation in result["segments"]:
      split_counts[is_validation] += end - start
    progress.bytes_done += result["stats"].get("bytes", 0)
    units_left[unit.source] -= 1
    if units_left[unit.source] == 0:
      progress.sources_done += 1
    progress.maybe_print(split_counts[False], split_counts[True])
  return results


def _route(units: Sequence[units_lib.Unit],
           running: Iterator[dict[str, Any]], settings: worker_lib.WorkerSettings,
           progress: _Progress):
  """Collects the units' results and puts their records into the splits.

  Returns:
    (unit index -> result, split name -> pieces, split name -> its
    `build_shards.EarlyShard`, closed).
  """
  early = {name: shards_lib.EarlyShard(
               os.path.join(settings.spill_dir, f"early-{name}.array_record"),
               settings.spill_dir)
           for name in ("train", "validation")}
  try:
    router = _Router(settings.validation_fraction,
                     lambda name, piece: early[name].add(piece))
    results = _collect(units, running, router, progress)
    return results, router.finish(), early
  finally:
    for shard in early.values():
      shard.close()


def _check_splits(splits: dict[str, list[shards_lib.Piece]], documents: int,
                  validation_fraction: float) -> None:
  if not splits["train"]:
    if documents == 0:
      raise UserInputError(
          "the inputs hold no text (every input is empty or blank); check "
          "--input / --tfds")
    if documents == 1:
      raise UserInputError(
          "the input holds a single document, and it was held out for "
          "validation; put blank lines between documents or pass "
          "--validation_fraction=0")
    raise UserInputError(
        f"all {documents} documents were held out for validation; lower "
        f"--validation_fraction")
  if validation_fraction > 0 and not splits["validation"]:
    raise UserInputError(
        "the input holds a single document, so none can be held out for "
        "validation; put blank lines between documents or pass "
        "--validation_fraction=0")


def _counts(units: Sequence[units_lib.Unit],
            results: dict[int, dict[str, Any]],
            splits: dict[str, list[shards_lib.Piece]], text_input: bool,
            num_records: int | None) -> dict[str, Any]:
  """The counts that go into metadata.json."""
  stats = collections.Counter()
  source_documents = collections.Counter()
  for unit in units:
    unit_stats = results[unit.index]["stats"]
    stats.update(unit_stats)
    source_documents[unit.source] += unit_stats.get("documents", 0)
  counts = {k: int(stats.get(k, 0)) for k in _COUNT_KEYS}
  if text_input:
    counts["files"] = len(source_documents)
    counts["empty_files"] = sum(1 for d in source_documents.values() if not d)
  else:
    counts["records"] = int(num_records)
    counts["empty_records"] = int(stats.get("empty_records", 0))
  counts["examples"] = {name: shards_lib.num_records(pieces)
                        for name, pieces in splits.items()}
  return counts


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
                  fork_workers: bool = False,
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
    num_workers: worker processes that tokenize, build, serialize and write
      (default: the CPU count; 0 = all in this process).  The output does not
      depend on it.
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
    fork_workers: start the workers by fork where `_start_method` finds that
      safe (faster to start); else they are spawned.  Leave it False in a
      process that may run threads (e.g. with JAX initialized).
    out: stream for progress lines (default stdout).

  Returns:
    output_dir.

  Raises:
    UserInputError: bad arguments or inputs (see the messages).
  """
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
  output_lib.check_output(output, overwrite)

  tok = tokenization.load_tokenizer(vocab_path)
  if tok.vocab_size >= 2**31:
    raise UserInputError(f"vocab {vocab_path} is too large for int32 ids")

  if tfds_name:
    spec = units_lib.TfdsSpec(tfds_name, tfds_split, tfds_data_dir,
                              tfds_text_key)
    units, num_records = units_lib.plan_tfds_units(spec, unit_bytes)
    input_desc = {"tfds": tfds_name, "tfds_split": tfds_split,
                  "tfds_text_key": tfds_text_key, "records": num_records}
    # Progress counts record ranges as "sources".
    units = [dataclasses.replace(u, source=u.index) for u in units]
    progress = _Progress(out, len(units), None, "record ranges")
  else:
    spec, num_records = None, None
    files = [epath.Path(f) for f in vocab_lib.expand_globs(inputs)]
    units, sizes = units_lib.plan_text_units(files, unit_bytes)
    if not any(sizes):
      raise UserInputError(
          f"all {len(files)} input file(s) are empty: "
          f"{', '.join(str(f) for f in files[:3])}"
          f"{' ...' if len(files) > 3 else ''}; check --input")
    input_desc = {"inputs": inputs, "files": [str(f) for f in files]}
    progress = _Progress(out, len(files), sum(sizes), "files")

  if num_workers is None:  # The main process only routes: little work.
    num_workers = os.cpu_count() or 1
  # One unit gains nothing from a worker process but its start-up.
  workers = min(num_workers, len(units)) if len(units) > 1 else 0
  start_method = _start_method(fork_workers, spec is None)
  main_file = getattr(sys.modules.get("__main__"), "__file__", None)
  if (workers and start_method == "spawn" and main_file and
      not os.path.exists(main_file)):
    # Spawned workers re-import __main__ and would fail (e.g. `python -`).
    print(f"[build] __main__ ({main_file}) is not a file, so worker processes "
          f"cannot start; tokenizing in this process", file=out, flush=True)
    workers = 0
  output.parent.mkdir(parents=True, exist_ok=True)
  tmp = output.parent / f".{output.name}.incomplete-{uuid.uuid4().hex[:8]}"
  tmp.mkdir()
  try:
    spill_dir = tmp / "spill"
    spill_dir.mkdir()
    settings = worker_lib.WorkerSettings(str(tok.path), max_seq_length, int(seed),
                               float(validation_fraction), spec,
                               os.fspath(spill_dir))
    print(f"[build] {len(units)} work unit(s), {workers} worker(s)"
          f"{f' ({start_method})' if workers else ''}, "
          f"max_seq_length {max_seq_length}, vocab "
          f"{epath.Path(tok.path).name} ({tok.kind}, {tok.vocab_size} ids)",
          file=out, flush=True)
    with _Workers(settings, workers, start_method) as pool:
      # Biggest first: they start first, so the last to finish are small.
      running = pool.run(worker_lib.process_unit, sorted(
          units, key=lambda u: u.end - u.start, reverse=True))
      # tfds is imported here, not at module level (worker processes import
      # this module and need neither), while the workers start.
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      from electra_jax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
      results, splits, early = _route(units, running, settings, progress)
      counts = _counts(units, results, splits, spec is None, num_records)
      builder = dataset_lib.ElectraPretraining(
          max_seq_length=max_seq_length,
          metadata={**output_lib.metadata(tok, settings, unit_bytes), **input_desc,
                    "counts": counts},
          write_splits=lambda template_fn: shards_lib.write_splits(
              splits, template_fn, pool.run, settings.spill_dir, early),
          data_dir=str(tmp), file_format="array_record")
      tfds.disable_progress_bar()
      with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(
            download_dir=str(tmp / "downloads"),
            download_config=tfds.download.DownloadConfig())
    output_lib.rmtree(spill_dir)
    output_lib.rmtree(tmp / "downloads")
    output_lib.add_vocab(tmp, tok)
    output_lib.replace_output(tmp, output, overwrite)
  except BaseException:
    output_lib.rmtree(tmp)
    raise

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
                      help="worker processes (default: the CPU count; 0: "
                      "all in the main process); the output does not depend "
                      "on it")
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
      tfds_data_dir=args.tfds_data_dir, fork_workers=True)


if __name__ == "__main__":
  run_cli(main)
