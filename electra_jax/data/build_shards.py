"""Writes the built splits as tfds-compatible ArrayRecord shards.

The worker processes of `electra_jax.data.build` spill each unit's serialized
examples to its own files (`spill_paths`); the records of a split (`Piece`s of
those files, in input order) are copied from there into the split's shards:
while the split is still one shard, as the units finish (`EarlyShard`), else
at the end, one shard a job (`write_splits`).  Shard counts, boundaries, file
names and ArrayRecord options are those of tfds' own writer.
"""

import dataclasses
import os
from typing import Any, Sequence

from array_record.python import array_record_module
import numpy as np

# What tfds' ArrayRecord writer uses (one record a chunk: fast random access).
_ARRAY_RECORD_OPTIONS = "group_size:1"
_COPY_BATCH_RECORDS = 4096


def spill_paths(spill_dir: str, unit_index: int) -> tuple[str, str]:
  """(records, offsets) files holding one unit's serialized examples."""
  stem = os.path.join(spill_dir, f"unit-{unit_index:06d}")
  return stem + ".records", stem + ".offsets.npy"


@dataclasses.dataclass(frozen=True)
class _ShardSource:
  """Records [start, end) of one unit's spill files."""
  data_path: str
  offsets_path: str
  start: int
  end: int


@dataclasses.dataclass(frozen=True)
class _ShardJob:
  path: str  # The ArrayRecord file to write.
  sources: tuple[_ShardSource, ...]  # Its records, in order.


def _copy_records(writer, source: _ShardSource) -> None:
  """Appends records [start, end) of a unit's spill to an ArrayRecord writer."""
  offsets = np.load(source.offsets_path, mmap_mode="r")
  with open(source.data_path, "rb") as f:
    for s in range(source.start, source.end, _COPY_BATCH_RECORDS):
      e = min(source.end, s + _COPY_BATCH_RECORDS)
      bounds = (offsets[s:e + 1] - offsets[s]).tolist()
      f.seek(int(offsets[s]))
      data = f.read(bounds[-1])
      for a, b in zip(bounds[:-1], bounds[1:]):
        writer.write(data[a:b])


def _write_shard(job: _ShardJob) -> int:
  """Writes one ArrayRecord shard (as tfds does) from spilled records."""
  writer = array_record_module.ArrayRecordWriter(job.path,
                                                 _ARRAY_RECORD_OPTIONS)
  try:
    for source in job.sources:
      _copy_records(writer, source)
  finally:
    writer.close()
  return sum(source.end - source.start for source in job.sources)


@dataclasses.dataclass(frozen=True)
class Piece:
  """Records [start, end) of one unit's spill, all of one split."""
  unit: int
  start: int
  end: int
  num_bytes: int


def num_records(pieces: Sequence[Piece]) -> int:
  return sum(p.end - p.start for p in pieces)


class EarlyShard:
  """Writes a split as its single shard while the units are being processed.

  Most splits (under 128 MiB of records) are one shard: the main process
  writes it from the spill as the units finish, in input order, instead of in
  a serial pass at the end.  Once the split outgrows one shard, the file is
  dropped and its shards are written at the end, in parallel.
  """

  def __init__(self, path: str, spill_dir: str):
    self.path = path
    self._spill_dir = spill_dir
    self._writer = None
    self.num_records = 0
    self.dropped = False
    self._num_bytes = 0

  def add(self, piece: Piece) -> None:
    if self.dropped:
      return
    num_records = self.num_records + piece.end - piece.start
    num_bytes = self._num_bytes + piece.num_bytes
    if _num_shards(num_bytes, num_records) > 1:
      self.drop()
      return
    if self._writer is None:
      self._writer = array_record_module.ArrayRecordWriter(
          self.path, _ARRAY_RECORD_OPTIONS)
    _copy_records(self._writer, _ShardSource(
        *spill_paths(self._spill_dir, piece.unit), piece.start, piece.end))
    self.num_records, self._num_bytes = num_records, num_bytes

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def drop(self) -> None:
    self.close()
    if os.path.exists(self.path):
      os.remove(self.path)
    self.dropped = True


def _num_shards(num_bytes: int, num_records: int) -> int:
  """The shard count tfds' own writer picks for a split of this size."""
  from tensorflow_datasets.core.utils import shard_utils  # pylint: disable=g-import-not-at-top
  return shard_utils.ShardConfig.calculate_number_shards(num_bytes,
                                                         num_records)


def _shard_jobs(pieces: Sequence[Piece], paths: Sequence[str],
                bounds: Sequence[int], spill_dir: str) -> list[_ShardJob]:
  """Cuts a split's pieces into shards: shard i holds records [b[i-1], b[i])."""
  firsts = np.cumsum([0] + [p.end - p.start for p in pieces])
  jobs, lo = [], 0
  for path, hi in zip(paths, bounds):
    sources = []
    i = int(np.searchsorted(firsts, lo, side="right")) - 1
    while i < len(pieces) and firsts[i] < hi:
      piece, first = pieces[i], int(firsts[i])
      start = piece.start + max(lo, first) - first
      end = piece.start + min(hi, int(firsts[i + 1])) - first
      if start < end:
        sources.append(_ShardSource(*spill_paths(spill_dir, piece.unit),
                                    start, end))
      i += 1
    jobs.append(_ShardJob(path, tuple(sources)))
    lo = hi
  return jobs


def write_splits(splits: dict[str, list[Piece]], template_fn, run,
                 spill_dir: str, early: dict[str, EarlyShard]) -> list[Any]:
  """Writes the splits' shards (in parallel); returns their tfds SplitInfos.

  `run(fn, args)` runs fn(arg) for every arg (in the build's worker pool) and
  yields the results.

  The shard count and boundaries are those tfds' writer would choose, and the
  files are written with its ArrayRecord options, in the tfds file names that
  `template_fn(split name)` gives.  A split's `early` shard, when it is the
  whole split, is only moved into place.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.utils import shard_utils  # pylint: disable=g-import-not-at-top
  infos, jobs = [], []
  for name, pieces in splits.items():
    split_records = num_records(pieces)
    num_bytes = sum(p.num_bytes for p in pieces)
    num_shards = _num_shards(num_bytes, split_records)
    bounds = list(shard_utils.get_shard_boundaries(split_records, num_shards))
    template = template_fn(name)
    paths = [os.fspath(template.sharded_filepath(shard_index=i,
                                                 num_shards=num_shards))
             for i in range(num_shards)]
    shard = early.get(name)
    if (num_shards == 1 and shard is not None and not shard.dropped and
        shard.num_records == split_records):
      shard.close()
      os.replace(shard.path, paths[0])
    else:
      jobs += _shard_jobs(pieces, paths, bounds, spill_dir)
    infos.append(tfds.core.SplitInfo(
        name=name, shard_lengths=np.diff([0] + bounds).tolist(),
        num_bytes=num_bytes, filename_template=template))
  jobs.sort(key=lambda j: sum(s.end - s.start for s in j.sources),
            reverse=True)
  written = sum(run(_write_shard, jobs))
  expected = sum(num_records(j.sources) for j in jobs)
  assert written == expected, (written, expected)
  return infos
