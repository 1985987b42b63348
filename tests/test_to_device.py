"""electra_jax.data.to_device: device batches prepared ahead, exact resumption."""

import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from electra_jax.data.to_device import DevicePrefetchIterator
from test_pipeline import ids, make  # pylint: disable=g-bad-import-order


def _put(host):
  return {k: jax.device_put(v) for k, v in host.items()}


def _ids(it, n):
  return [i for _ in range(n) for i in ids(jax.device_get(next(it)))]


def test_same_batches_on_the_device_in_the_same_order():
  it = DevicePrefetchIterator(make(n=10, prefetch=2), put=_put)
  batch = next(it)
  assert all(isinstance(v, jax.Array) for v in batch.values())
  got = ids(jax.device_get(batch)) + _ids(it, 6)
  assert got == _ids(make(n=10, prefetch=2), 7)
  it.close()


@pytest.mark.parametrize("consumed", [0, 1, 3, 7])
def test_state_is_that_of_the_consumed_batches_not_the_read_ahead(consumed):
  it = DevicePrefetchIterator(make(n=10, prefetch=2), put=_put, depth=2)
  _ids(it, consumed)
  time.sleep(0.2)  # let the thread read ahead as far as it can
  state = it.get_state()
  expected = _ids(it, 5)
  it.close()
  reference = make(n=10, prefetch=2)
  _ids(reference, consumed)
  assert expected == _ids(reference, 5)
  resumed = DevicePrefetchIterator(make(n=10, prefetch=2), put=_put)
  resumed.set_state(state)
  assert _ids(resumed, 5) == expected
  resumed.close()


def test_orbax_round_trip_with_grain_handler(tmp_path):
  """train.py's pattern: the prefetcher is the 'data' item; the file is grain's own."""
  weights = {"w": jnp.arange(4.0)}
  it = DevicePrefetchIterator(make(n=10, prefetch=2), put=_put)
  _ids(it, 3)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(weights),
                                         data=grain.checkpoint.CheckpointSave(it)))
    expected = _ids(it, 4)
    mngr.wait_until_finished()
  it.close()
  plain = make(n=10, prefetch=2)  # a checkpoint of the plain iterator restores into it too
  fresh = DevicePrefetchIterator(make(n=10, prefetch=2), put=_put)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, weights)
    mngr.restore(3, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                            data=grain.checkpoint.CheckpointRestore(fresh)))
    mngr.restore(3, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                            data=grain.checkpoint.CheckpointRestore(plain)))
  assert _ids(fresh, 4) == expected
  assert [i for _ in range(4) for i in ids(next(plain))] == expected
  fresh.close()


class _Broken:
  def __init__(self, after: int):
    self.after, self.n = after, 0

  def __next__(self):
    self.n += 1
    if self.n > self.after:
      raise OSError("disk gone")
    return {"x": np.full(2, self.n)}

  def get_state(self):
    return {"n": self.n}


def test_errors_reach_the_loop_and_restore_after_start_is_refused():
  it = DevicePrefetchIterator(_Broken(after=2), put=lambda b: b)
  assert [next(it)["x"][0] for _ in range(2)] == [1, 2]
  for _ in range(2):  # and every later call
    with pytest.raises(OSError, match="disk gone"):
      next(it)
  with pytest.raises(RuntimeError, match="restore before the first next"):
    it.set_state(b"{}")
  with pytest.raises(ValueError, match="depth"):
    DevicePrefetchIterator(_Broken(1), put=lambda b: b, depth=0)
