"""Batches put on the devices ahead of time by a background thread, checkpointably.

The training loop would otherwise take each host batch from the pipeline and transfer
it itself, between two step dispatches.  On a busy host (2 CPU cores running XLA's
compute threads and the pipeline's readers) those two calls took ~3.5 ms per step,
2-3% of a small model's step time (benchmarks/input_wait.md).  Here a thread does both
and hands over ready device arrays.

Resumption stays exact: the thread records the pipeline's state right after each batch
it takes, and `get_state()` returns the state of the last batch the loop consumed, not
of the batches waiting in the queue.  It speaks grain's checkpoint protocol for
non-DatasetIterators (JSON bytes; the same file grain writes for the wrapped iterator),
so `grain.checkpoint.CheckpointSave/CheckpointRestore` take it as they are.
"""

import json
import queue
import threading
from typing import Any, Callable, Iterator


class _Failure:
  def __init__(self, error: BaseException):
    self.error = error


class DevicePrefetchIterator:
  """Iterates `put(batch)` for the batches of a checkpointable `source` iterator.

  `source` has `__next__`, `get_state()` and `set_state()` (a grain DatasetIterator);
  `put` turns a host batch into device arrays.  The thread starts at the first `next`,
  so `set_state` (a restore) must come before it.  `depth` batches wait at most: 6 rides
  out the stretches in which XLA's compute threads starve this one on a 2-core host
  (the tiny demo at ~40k tokens/s waited 1.5-2.0% of its time with 2, 0.6-0.7% with 6;
  benchmarks/input_wait.md).  A batch of device arrays is small next to the model.
  """

  def __init__(self, source: Any, put: Callable[[Any], Any], depth: int = 6):
    if depth < 1:
      raise ValueError(f"depth must be >= 1, got {depth}")
    self._source, self._put = source, put
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._state = None  # the source's state after the last consumed batch
    self._thread: threading.Thread | None = None
    self._stop = threading.Event()

  def __iter__(self) -> Iterator[Any]:
    return self

  def _run(self):
    try:
      while not self._stop.is_set():
        batch = next(self._source)
        item = (self._put(batch), self._source.get_state())
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except BaseException as e:  # pylint: disable=broad-except  # re-raised in __next__
      self._queue.put(_Failure(e))

  def __next__(self):
    if self._thread is None:
      self._state = self._source.get_state()
      self._thread = threading.Thread(target=self._run, name="device_prefetch",
                                      daemon=True)
      self._thread.start()
    item = self._queue.get()
    if isinstance(item, _Failure):
      self._queue.put(item)  # every later call fails the same way
      raise item.error
    batch, self._state = item
    return batch

  def get_state(self) -> bytes:
    state = self._source.get_state() if self._thread is None else self._state
    return json.dumps(state, indent=4).encode()

  def set_state(self, state: bytes) -> None:
    if self._thread is not None:
      raise RuntimeError("set_state after iteration started: restore before the first next()")
    self._source.set_state(json.loads(state))

  def start_prefetch(self) -> None:
    """(grain's restore calls it) The thread starts at the first `next` anyway."""

  def close(self) -> None:
    """Stops the thread (the source is left where the thread last read it)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
