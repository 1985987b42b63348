"""Batches of pretraining examples for the training loop and for evaluation.

`train_iterator` turns a random-access source of examples (a split of
`open_dataset(...).sources`, or any object with `__len__` and `__getitem__`
returning dicts of int32 arrays) into an endless, seeded, per-host sharded
stream of batches built with grain.  `eval_batches` returns a fixed list of
batches for held-out evaluation.

Sharding: host `i` of `n` reads the examples `i, i + n, i + 2n, ...` of the
source, so the hosts' parts are disjoint and together cover the data.  Each
host yields batches of `global_batch_size // n` examples; the global batch of a
step is the concatenation of the hosts' batches (feed it to
`jax.make_array_from_process_local_data`).

Order: each host shuffles its part with a permutation drawn from `seed` and the
epoch number, so every epoch has a different order and every example appears
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


def _host_part(source, process_index: int, process_count: int, what: str):
  """Returns this host's strided part of `source` as a grain.MapDataset."""
  try:
    n = len(source)
  except TypeError as e:
    raise UserInputError(
        f'{what} source {type(source).__name__} has no length: pass a '
        'random-access source (e.g. open_dataset(dir).sources["train"])'
    ) from e
  ds = grain.MapDataset.source(source)
  if process_count > 1:
    ds = ds[process_index::process_count]
  return ds, n


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
  ds, n = _host_part(source, process_index, process_count, 'train')
  if len(ds) < batch:
    raise UserInputError(
        f'the train split has {n} examples, {len(ds)} for host '
        f'{process_index} of {process_count}, fewer than one per-host batch '
        f'of {batch}: use more data or a smaller global batch size '
        f'(now {global_batch_size})')
  ds = ds.shuffle(seed=_shuffle_seed(seed)).repeat(None)
  ds = ds.batch(batch, drop_remainder=True, batch_fn=_stack)
  read_options = grain.ReadOptions(
      num_threads=num_threads if prefetch else 0,
      prefetch_buffer_size=prefetch if num_threads else 0)
  spec = {
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

  The host reads its strided part of `source` in order (no shuffle), cycling
  through it when it holds fewer than `num_batches` batches; hosts' parts are
  disjoint and every host returns `num_batches` batches.

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
  ds, n = _host_part(source, process_index, process_count, 'eval')
  if len(ds) == 0:  # pylint: disable=g-explicit-length-test
    raise UserInputError(
        f'the eval split has {n} examples, none for host {process_index} of '
        f'{process_count}: build the dataset with a larger '
        'validation_fraction')
  ds = ds.repeat(None).batch(batch, drop_remainder=True, batch_fn=_stack)
  ds = ds[:num_batches]
  return list(ds.to_iter_dataset(
      grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)))
