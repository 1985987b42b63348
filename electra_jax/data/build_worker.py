"""The dataset builder's worker side: one work unit in, its examples spilled to disk.

`process_unit` (run by `electra_jax.data.build`'s worker processes, or in the main
process) reads a unit's text (`build_units`), tokenizes it in batches, builds the
examples (`electra_jax.data.examples`) with the unit's own seeded generator, decides
each document's split by a seeded hash, serializes the records
(`electra_jax.data.records`) and spills them to the unit's files (`build_shards`).
It returns the unit's counts and record ranges.  Spawned workers must not import
tensorflow_datasets unless the input is tfds.
"""

import collections
import dataclasses
import hashlib
from typing import Any, Sequence

import numpy as np

from electra_jax import tokenization
from electra_jax.data import build_shards as shards_lib
from electra_jax.data import build_units as units_lib
from electra_jax.data import examples as examples_lib
from electra_jax.data import records as records_lib

_TOKENIZE_BATCH_LINES = 1024
_TOKENIZE_BATCH_CHARS = 1 << 20


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
  vocab_path: str
  max_seq_length: int
  seed: int
  validation_fraction: float
  tfds: units_lib.TfdsSpec | None
  spill_dir: str  # Where workers write the units' serialized examples.


worker_state: dict[str, Any] = {}


def init_worker(settings: WorkerSettings) -> None:
  worker_state.clear()
  worker_state["settings"] = settings
  worker_state["tokenizer"] = tokenization.load_tokenizer(settings.vocab_path)
  if settings.tfds is not None:
    worker_state["tfds_source"] = units_lib.open_tfds_source(settings.tfds)


class _UnitSpill:
  """Serializes one unit's examples (tf.train.Example) into its spill files."""

  def __init__(self, spill_dir: str, unit_index: int):
    self._data_path, self._offsets_path = shards_lib.spill_paths(spill_dir,
                                                                 unit_index)
    self._file = None
    self._size = 0
    self._offsets = [np.zeros(1, np.int64)]
    self._documents = []

  def add(self, arrays: dict[str, np.ndarray], documents: Sequence[int]):
    data, offsets = records_lib.encode_examples(arrays)
    if self._file is None:
      self._file = open(self._data_path, "wb")
    self._file.write(data)
    self._offsets.append(offsets[1:] + self._size)
    self._size += len(data)
    self._documents.append(np.asarray(documents, np.int32))

  def finish(self) -> tuple[np.ndarray, np.ndarray]:
    """Closes the files; returns (offsets [n + 1], document of each record)."""
    offsets = np.concatenate(self._offsets)
    if self._file is not None:
      self._file.close()
      np.save(self._offsets_path, offsets)
    documents = (np.concatenate(self._documents) if self._documents else
                 np.zeros((0,), np.int32))
    return offsets, documents


def _is_validation(seed: int, unit_index: int, document: int,
                   fraction: float) -> bool:
  if fraction <= 0:
    return False
  digest = hashlib.blake2b(f"{seed}/{unit_index}/{document}".encode(),
                           digest_size=8).digest()
  return int.from_bytes(digest, "little") / 2.0**64 < fraction


def _segments(offsets: np.ndarray, documents: np.ndarray, unit_index: int
             ) -> list[tuple[int, int, int, bool]]:
  """The unit's records as (start, end, bytes, is_validation) ranges.

  Consecutive documents of one split share a range, except the unit's last
  document, which is always a range of its own (the main process may move the
  very last document of the input to validation).
  """
  settings: WorkerSettings = worker_state["settings"]
  if not len(documents):  # pylint: disable=g-explicit-length-test
    return []
  cuts = (np.flatnonzero(np.diff(documents)) + 1).tolist()
  starts, ends = [0] + cuts, cuts + [len(documents)]
  segments = []
  for i, (s, e) in enumerate(zip(starts, ends)):
    flag = _is_validation(settings.seed, unit_index, int(documents[s]),
                          settings.validation_fraction)
    if segments and segments[-1][2] == flag and i < len(starts) - 1:
      segments[-1][1] = e
    else:
      segments.append([s, e, flag])
  return [(s, e, int(offsets[e] - offsets[s]), flag)
          for s, e, flag in segments]


def process_unit(unit: units_lib.Unit) -> dict[str, Any]:
  """Tokenizes one unit, builds its examples and spills them.

  The examples go, serialized, to the unit's spill files
  (`build_shards.spill_paths`).

  Returns:
    'unit': the unit index; 'num_records'; 'segments': (start, end, bytes,
    is_validation) record ranges in order (see `_segments`);
    'documents_with_examples'; 'stats': counts.
  """
  settings: WorkerSettings = worker_state["settings"]
  tok = worker_state["tokenizer"]
  max_len = settings.max_seq_length
  stats = collections.Counter()
  texts, doc_of_text = units_lib.unit_texts(
      unit, stats, worker_state.get("tfds_source"),
      settings.tfds.text_key if settings.tfds is not None else None)

  rng = np.random.default_rng([settings.seed, unit.index])
  builder = examples_lib.ExampleBuilder(max_len, rng)
  spill = _UnitSpill(settings.spill_dir, unit.index)
  pending: list[examples_lib.Segments] = []
  pending_docs: list[int] = []

  def pack():
    if pending:
      spill.add(examples_lib.pack_examples(
          pending, max_len, cls_id=tok.cls_id, sep_id=tok.sep_id,
          pad_id=tok.pad_id), pending_docs)
      stats["tokens_in_examples"] += sum(len(a) + len(b) for a, b in pending)
      pending.clear()
      pending_docs.clear()

  current_doc, tokens, start = 0, 0, 0
  while start < len(texts):
    end, chars = start, 0
    while (end < len(texts) and end - start < _TOKENIZE_BATCH_LINES and
           chars < _TOKENIZE_BATCH_CHARS):
      chars += len(texts[end])
      end += 1
    for ids, d in zip(tok.encode_batch(texts[start:end]),
                      doc_of_text[start:end]):
      if d != current_doc:
        done = builder.end_document()
        pending.extend(done)
        pending_docs.extend([current_doc] * len(done))
        current_doc = d
      tokens += len(ids)
      done = builder.add_line(ids)
      if done:
        pending.extend(done)
        pending_docs.extend([d] * len(done))
    pack()
    start = end
  done = builder.end_document()
  pending.extend(done)
  pending_docs.extend([current_doc] * len(done))
  pack()
  stats["tokens"] = tokens
  stats["long_lines_split"] = builder.long_lines

  offsets, documents = spill.finish()
  return {
      "unit": unit.index,
      "num_records": len(documents),
      "segments": _segments(offsets, documents, unit.index),
      "documents_with_examples": len(np.unique(documents)),
      "stats": dict(stats),
  }


def call(job: tuple[Any, Any]) -> Any:
  fn, arg = job
  return fn(arg)
