"""The counter-hash random numbers behind dropout, masking and sampling."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from electra_jax import counter_rng

_jit = jax.jit


def _tol(p, n):
  """6 standard errors of a binomial proportion p over n draws."""
  return 6 * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_keep_mask_rate_and_independence(rate):
  """Keeps 1 - rate of the elements, with no structure between neighbours, rows or keys."""
  shape = (64, 128, 128)  # 1M elements: the size of an attention-probability tensor
  f = _jit(counter_rng.keep_mask, static_argnums=(1, 2))
  a = np.asarray(f(jax.random.key(0), rate, shape))
  b = np.asarray(f(jax.random.key(1), rate, shape))
  keep = 1.0 - rate
  assert abs(a.mean() - keep) < _tol(keep, a.size)
  assert abs(b.mean() - keep) < _tol(keep, b.size)
  for x, y in ((a[..., 1:], a[..., :-1]), (a[:, 1:], a[:, :-1]), (a[1:], a[:-1]), (a, b)):
    assert abs((x & y).mean() - keep ** 2) < _tol(keep ** 2, x.size)
  assert (a != b).any()


def test_uniform_is_open_and_uniform():
  u = np.asarray(_jit(counter_rng.uniform, static_argnums=1)(jax.random.key(2), (200_000,)))
  assert u.dtype == np.float32 and u.min() > 0.0 and u.max() < 1.0
  assert stats.kstest(u, "uniform").pvalue > 1e-4


def test_arrays_over_the_32_bit_counter_use_two_counters(monkeypatch):
  """ELECTRA-Large's attention-dropout mask at batch 2048 has 8.6e9 elements: it must
  trace, and the two-counter numbering must be as random as the one-counter one."""
  traced = jax.eval_shape(lambda k: counter_rng.keep_mask(k, 0.1, (2048, 16, 512, 512)),
                          jax.random.key(0))
  assert traced.shape == (2048, 16, 512, 512)
  small = np.asarray(counter_rng.bits(jax.random.key(4), (64, 4096)))
  monkeypatch.setattr(counter_rng, "_COUNTER_LIMIT", 4097)  # rows of 4096: hi = row
  two = np.asarray(counter_rng.bits(jax.random.key(4), (64, 4096)))
  assert (two == small).mean() < 1e-3  # a different numbering, not the old one
  assert all(len(np.unique(row)) == row.size for row in two)  # a bijection per row
  u = np.asarray(counter_rng.uniform(jax.random.key(5), (64, 4096))).ravel()
  assert stats.kstest(u, "uniform").pvalue > 1e-4
  keep = np.asarray(counter_rng.keep_mask(jax.random.key(6), 0.1, (64, 4096)))
  assert abs(keep.mean() - 0.9) < _tol(0.9, keep.size)
  for x, y in ((keep[1:], keep[:-1]), (keep[:, 1:], keep[:, :-1])):  # across hi, across lo
    assert abs((x & y).mean() - 0.81) < _tol(0.81, x.size)
  monkeypatch.setattr(counter_rng, "_COUNTER_LIMIT", 17)  # 15 rows of 16: still fine
  assert np.asarray(counter_rng.bits(jax.random.key(0), (15, 16))).shape == (15, 16)
  with pytest.raises(ValueError, match="too large"):
    counter_rng.bits(jax.random.key(0), (16, 16, 16))  # 256 leading elements >= 17


@pytest.mark.parametrize("limit", [None, 2000])
def test_micro_batch_rows_draw_the_whole_batch_values(monkeypatch, limit):
  """Inside example_rows(rows, k, i) an array holds the whole batch's rows i, i + k, ...
  (the one-counter path, and with the limit lowered, the two-counter one)."""
  if limit:
    monkeypatch.setattr(counter_rng, "_COUNTER_LIMIT", limit)  # whole: 12 x 5 x 7 x 6 = 2520
  key = jax.random.key(7)
  shape = (12, 5, 7, 6)
  whole = np.asarray(counter_rng.bits(key, shape))
  for k in (2, 3, 4):
    for i in range(k):
      def micro(key, i):
        with counter_rng.example_rows(12 // k, k, i):
          return (counter_rng.bits(key, (12 // k,) + shape[1:]),
                  counter_rng.bits(key, (12 // k * 5, 42)))  # rows flattened with tokens
      a, b = _jit(micro)(key, i)  # i traced, as a scan index is
      np.testing.assert_array_equal(a, whole[i::k])
      np.testing.assert_array_equal(b, whole[i::k].reshape(-1, 42))
  with counter_rng.example_rows(5, 2, 0):
    with pytest.raises(ValueError, match="does not split into the micro-batch's 5"):
      counter_rng.bits(key, (4, 3))
  assert counter_rng._ROWS.get() is None  # the context is gone afterwards


@pytest.mark.parametrize("limit", [None, 2000])
def test_device_shard_micro_batches_draw_the_whole_batch_values(monkeypatch, limit):
  """Nested example_rows: a device's contiguous rows (example_rows(6, 1, 6 d, total=12),
  as train_step.shard_map_gradients opens) split into micro-batches of rows i, i + k, ...
  hold the whole batch's rows 6 d + i, 6 d + i + k, ... (both counter paths: the
  whole batch's size, not the shard's, picks the path)."""
  if limit:
    monkeypatch.setattr(counter_rng, "_COUNTER_LIMIT", limit)  # shard 1260 < 2000 < 2520
  key = jax.random.key(7)
  shape = (12, 5, 7, 6)
  whole = np.asarray(counter_rng.bits(key, shape))
  for d in range(2):
    for k, i in ((1, 0), (2, 1), (3, 2)):
      def micro(key, d, i):
        with counter_rng.example_rows(6, 1, d * 6, total=12):
          with counter_rng.example_rows(6 // k, k, i):
            return counter_rng.bits(key, (6 // k,) + shape[1:])
      got = _jit(micro)(key, d, i)  # d and i traced, as axis_index and a scan index are
      np.testing.assert_array_equal(got, whole[6 * d:6 * d + 6][i::k])
  assert counter_rng._ROWS.get() is None


def test_randint_range_and_uniformity():
  r = np.asarray(_jit(counter_rng.randint, static_argnums=(1, 2))(jax.random.key(8),
                                                                   (300_000,), 7))
  assert r.dtype == np.int32 and r.min() == 0 and r.max() == 6
  assert stats.chisquare(np.bincount(r, minlength=7)).pvalue > 1e-4
  with pytest.raises(ValueError, match="maxval=0"):
    counter_rng.randint(jax.random.key(0), (2,), 0)


def test_argmax_matches_jnp_argmax_including_ties():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 5, size=(7, 9, 301)).astype(np.float32)  # many ties: first wins
  for axis in (-1, 0, 1):
    np.testing.assert_array_equal(np.asarray(counter_rng.argmax(jnp.asarray(x), axis)),
                                  np.argmax(x, axis=axis))
  nan_row = jnp.full((2, 5), jnp.nan)
  assert int(counter_rng.argmax(nan_row).max()) <= 4  # still a valid index


def test_values_do_not_depend_on_sharding():
  """8 simulated devices computing sharded arrays give the single-device values."""
  code = (
      "import jax, numpy as np\n"
      "from jax.sharding import NamedSharding, PartitionSpec as P\n"
      "from electra_jax import counter_rng\n"
      "mesh = jax.make_mesh((8,), ('d',))\n"
      "for f in (lambda k: counter_rng.keep_mask(k, 0.1, (16, 4, 32, 32)),\n"
      "          lambda k: counter_rng.uniform(k, (16, 19, 300))):\n"
      "  one = np.asarray(jax.jit(f)(jax.random.key(3)))\n"
      "  sharded = jax.jit(f, out_shardings=NamedSharding(mesh, P('d')))(jax.random.key(3))\n"
      "  assert len(sharded.sharding.device_set) == 8\n"
      "  np.testing.assert_array_equal(np.asarray(sharded), one)\n"
      "print('same')\n")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0 and "same" in out.stdout, out.stderr[-2000:]
