"""Batches of pretraining examples for the training loop and for evaluation.

`train_iterator` turns a random-access source of examples (a split of
`open_dataset(...).sources`, or any object with `__len__` and `__getitem__`
returning dicts of int32 arrays) into an endless, seeded, per-host sharded
stream of batches built with grain.  `eval_batches` returns a fixed list of
batches for held-out evaluation.  A batch is read in one call when the source
can (`read_batch`, as `open_dataset`'s sources have, else `__getitems__`).

Sharding: the global batch of a step does not depend on the number of hosts.
Every host draws the same global order of example indices (a permutation from
`seed` and the epoch number) and cuts it into global batches; host `i` of `n`
reads only its rows `[i * b, (i + 1) * b)` of each, `b = global_batch_size // n`.
The hosts' rows are disjoint, and concatenated in host order (what
`jax.make_array_from_process_local_data` does) they are the single-host batch:
a run on 2 hosts sees exactly the data a run on 1 host sees.

Order: every epoch has a different permutation and every example appears
exactly once per epoch.  The stream never ends; a batch may straddle an epoch
boundary (nothing is dropped at the end of an epoch).

Checkpointing the position in the stream with orbax, as a second item next to
the train state (the grain handler writes one small JSON file per host)::

  import grain
  import orbax.checkpoint as ocp

  it = train_iterator(built.sources['train'], global_batch_size=128, seed=0)
  mngr = ocp.CheckpointManager(workdir / 'checkpoints')
  # save
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(it)))
  # restore: build the iterator with the same arguments, then
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(it)))
  state = restored['state']  # `it` itself now continues where it was saved.

Save the iterator state in the same call as the model state of that step, i.e.
after exactly the batches the state has consumed.  Restoring into an iterator
built with a different seed, batch size, host count or source length raises
`UserInputError`: the saved position would point at different examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from electra_jax.errors import UserInputError

# Keys every example carries (see electra_jax.data.dataset).
FEATURE_KEYS = ('input_ids', 'input_mask', 'segment_ids')


def _host(process_index: int | None,
          process_count: int | None) -> tuple[int, int]:
  """Returns (process_index, process_count), from jax where not given."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    if process_index is None:
      process_index = jax.process_index()
    if process_count is None:
      process_count = jax.process_count()
  if process_count < 1 or not 0 <= process_index < process_count:
    raise UserInputError(
        f'process_index {process_index} is not in [0, process_count='
        f'{process_count}): pass 0 <= process_index < process_count')
  return int(process_index), int(process_count)


def _per_host_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size < 1:
    raise UserInputError(
        f'global batch size {global_batch_size} must be positive')
  if global_batch_size % process_count:
    raise UserInputError(
        f'global batch size {global_batch_size} is not divisible by the '
        f'{process_count} hosts: use a multiple of {process_count}')
  return global_batch_size // process_count


def _stack(examples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
  """Stacks a list of example dicts into a dict of int32 [batch, L] arrays."""
  return {
      key: np.stack([np.asarray(e[key]) for e in examples]).astype(
          np.int32, copy=False)
      for key in examples[0]
  }


def _shuffle_seed(seed: int) -> int:
  """Maps the user's seed to grain's 32-bit shuffle seed.

  grain permutes epoch `e` with seed `s + e`; hashing the user's seed first
  keeps run `seed=1` from replaying run `seed=0` shifted by one epoch.
  """
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise UserInputError(f'seed {seed!r} must be a non-negative integer')
  return int(np.random.SeedSequence([int(seed), 0x454C]).generate_state(
      1, np.uint32)[0])


def _length(source, what: str) -> int:
  try:
    return len(source)
  except TypeError as e:
    raise UserInputError(
        f'{what} source {type(source).__name__} has no length: pass a '
        'random-access source (e.g. open_dataset(dir).sources["train"])'
    ) from e


class _ReadRows:
  """Global index batch -> this host's rows, read from `source` and stacked."""

  def __init__(self, source, start: int, size: int):
    self._source, self._start, self._size = source, start, size

  def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    rows = [int(i) for i in indices[self._start:self._start + self._size]]
    return _read(self._source, rows)


def _read(source, rows: list[int]) -> dict[str, np.ndarray]:
  """Examples `rows` of `source`, stacked, by its fastest way of reading.

  `read_batch` (an `ExampleSource` of `open_dataset`) reads and parses the
  batch at once; `__getitems__` (tfds and grain sources) reads the records in
  one call, several times faster than one `source[i]` at a time on
  ArrayRecord.
  """
  if hasattr(source, 'read_batch'):
    batch = source.read_batch(rows)
    return {k: np.asarray(v).astype(np.int32, copy=False)
            for k, v in batch.items()}
  if hasattr(source, '__getitems__'):
    return _stack(list(source.__getitems__(rows)))
  return _stack([source[i] for i in rows])


class _PipelineIterator(grain.DatasetIterator):
  """Passes batches through; its state also records how the pipeline was built.

  The position inside grain's stream is only meaningful for the same seed,
  batch size, sharding and source, so `set_state` checks them.
  """

  def __init__(self, parent: grain.DatasetIterator, spec: dict[str, int]):
    super().__init__(parent)
    self._spec = dict(spec)

  def __next__(self):
    return next(self._parent)

  def get_state(self) -> dict[str, Any]:
    return {'pipeline': dict(self._spec), 'grain': self._parent.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    if not isinstance(state, Mapping) or 'grain' not in state:
      raise UserInputError(
          'data iterator state was not written by '
          'electra_jax.data.pipeline.train_iterator: restore without the '
          "'data' item to restart the data stream")
    saved = dict(state.get('pipeline', {}))
    diff = [f'{k} {saved.get(k)} -> {v}' for k, v in self._spec.items()
            if saved.get(k) != v]
    if diff:
      raise UserInputError(
          'data iterator state was saved for a different input pipeline ('
          + ', '.join(diff) + '): restore with the same data, seed, batch '
          "size and host count, or without the 'data' item to restart the "
          'data stream')
    self._parent.set_state(state['grain'])

  def __str__(self) -> str:
    return f'ElectraTrainIterator({self._spec})'


class _PipelineIterDataset(grain.IterDataset):
  """An IterDataset whose iterators are `_PipelineIterator`s."""

  def __init__(self, parent: grain.IterDataset, spec: dict[str, int]):
    super().__init__(parent)
    self._spec = spec

  def __iter__(self) -> _PipelineIterator:
    return _PipelineIterator(iter(self._parent), self._spec)

  def __str__(self) -> str:
    return f'ElectraTrainDataset({self._spec})'


def train_iterator(source,
                   *,
                   global_batch_size: int,
                   seed: int,
                   process_index: int | None = None,
                   process_count: int | None = None,
                   prefetch: int = 2,
                   num_threads: int = 2) -> grain.DatasetIterator:
  """Returns an endless, checkpointable iterator over this host's train batches.

  Args:
    source: random-access examples: `len(source)` and `source[i]` -> dict of
      int32 arrays 'input_ids', 'input_mask', 'segment_ids' of length L.
    global_batch_size: examples per step over all hosts.
    seed: shuffle seed (non-negative); the order differs per seed and epoch.
    process_index: this host; default `jax.process_index()`.
    process_count: number of hosts; default `jax.process_count()`.
    prefetch: batches prepared ahead in background threads (0 = none).
    num_threads: threads that read and batch examples when prefetch > 0.

  Returns:
    A grain.DatasetIterator yielding dicts of np.int32 arrays of shape
    [global_batch_size // process_count, L]; `get_state()`/`set_state()` (or
    grain.checkpoint.CheckpointSave/Restore with orbax) resume it exactly.

  Raises:
    UserInputError: the global batch is not divisible by the host count, or a
      host's part of the source holds fewer examples than one batch.
  """
  process_index, process_count = _host(process_index, process_count)
  batch = _per_host_batch_size(global_batch_size, process_count)
  if prefetch < 0 or num_threads < 0:
    raise UserInputError(
        f'prefetch ({prefetch}) and num_threads ({num_threads}) must be >= 0')
  n = _length(source, 'train')
  if n < global_batch_size:
    raise UserInputError(
        f'the train split has {n} examples, fewer than one global batch of '
        f'{global_batch_size}: use more data or a smaller global batch size')
  ds = grain.MapDataset.range(n).shuffle(seed=_shuffle_seed(seed)).repeat(None)
  ds = ds.batch(global_batch_size, drop_remainder=True)
  ds = ds.map(_ReadRows(source, process_index * batch, batch))
  read_options = grain.ReadOptions(
      num_threads=num_threads if prefetch else 0,
      prefetch_buffer_size=prefetch if num_threads else 0)
  spec = {
      'order': 'global',  # batches independent of the host count (since 2026-11)
      'seed': int(seed),
      'source_length': int(n),
      'per_host_batch_size': batch,
      'process_index': process_index,
      'process_count': process_count,
  }
  return iter(_PipelineIterDataset(ds.to_iter_dataset(read_options), spec))


def eval_batches(source,
                 *,
                 global_batch_size: int,
                 num_batches: int,
                 process_index: int | None = None,
                 process_count: int | None = None
                ) -> list[dict[str, np.ndarray]]:
  """Returns this host's evaluation batches: the same list on every call.

  Global batch `j` holds examples `j * B, ..., (j + 1) * B - 1` of `source` in
  order (cycling when the source is shorter); host `i` returns its rows
  `[i * b, (i + 1) * b)` of each, so the batches do not depend on the host count.

  Args:
    source: random-access examples, as for `train_iterator`.
    global_batch_size: examples per eval step over all hosts.
    num_batches: number of batches to return.
    process_index: this host; default `jax.process_index()`.
    process_count: number of hosts; default `jax.process_count()`.

  Returns:
    A list of `num_batches` dicts of np.int32 [global_batch_size //
    process_count, L] arrays.
  """
  process_index, process_count = _host(process_index, process_count)
  batch = _per_host_batch_size(global_batch_size, process_count)
  if num_batches < 0:
    raise UserInputError(f'num_batches {num_batches} must be >= 0')
  if num_batches == 0:
    return []
  n = _length(source, 'eval')
  if n == 0:
    raise UserInputError('the eval split has no examples: build the dataset with a '
                         'larger validation_fraction')
  ds = grain.MapDataset.range(n).repeat(None).batch(global_batch_size, drop_remainder=True)
  ds = ds[:num_batches].map(_ReadRows(source, process_index * batch, batch))
  return list(ds.to_iter_dataset(
      grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)))
