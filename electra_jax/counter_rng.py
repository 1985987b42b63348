"""Cheap per-element random numbers for the hot path: dropout masks, masking, sampling.

`jax.random` draws every element with threefry (20 rounds of 32-bit arithmetic per
element), which on a CPU made dropout ~15% and sampling noise over the vocabulary
~10% of an ELECTRA-Small training step (benchmarks/train_step.py).  Here one 64-bit
seed (s1, s2) is drawn per call with threefry, and element i gets

    bits(i) = mix(mix(i ^ s1) + s2)

with `mix` MurmurHash3's 32-bit finaliser, a bijection of uint32 with full avalanche:
a few integer ops per element, vectorised by XLA, ~40x cheaper than threefry.  `i` is
the element's position in a global iota, so the values of an array do not depend on
how it is sharded over devices.  Inside `example_rows`, `i` is the element's position
in the whole batch a micro-batch was taken from, so gradient accumulation draws the
same masks, samples and dropout as one step on the whole batch.  The streams are for
dropout, masking and sampling, not for cryptography; their rate and independence are
tested in tests/test_counter_rng.py.
"""

import contextlib
import contextvars
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


def _mix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _one_counter(counter, s1, s2):
  """The bits of element `counter` (arrays under _COUNTER_LIMIT elements)."""
  return _mix32(_mix32(counter ^ s1) + s2)


def _two_counters(hi, lo, s1, s2):
  """The bits of element (hi, lo) (larger arrays; see `bits`)."""
  return _mix32(_mix32(lo ^ s1) + _mix32(hi ^ s2) + s2)


@dataclasses.dataclass(frozen=True)
class _Rows:
  rows: int  # rows of the micro-batch (the leading dim of every array drawn)
  stride: int  # its row r is row r * stride + offset of the whole batch
  offset: jax.Array | int
  total: int  # rows of the whole batch


_ROWS: contextvars.ContextVar[_Rows | None] = contextvars.ContextVar("rows", default=None)


@contextlib.contextmanager
def example_rows(rows: int, stride: int, offset, total: int | None = None):
  """While tracing inside, arrays are drawn as rows of a larger batch.

  A micro-batch of `rows` examples whose row r is row r * stride + offset of the whole
  batch of `total` rows (default rows * stride; `offset` may be traced: a scan's
  index or a device's position).  Every array drawn inside must have the examples as
  its outermost dim (a multiple of `rows` of equal-sized blocks): it then holds exactly
  the values those rows get when the whole batch draws the array.  Nested, the inner
  rows are rows of the enclosing micro-batch (a device's shard split into micro-batches).
  """
  rows, stride = int(rows), int(stride)
  total = rows * stride if total is None else int(total)
  outer = _ROWS.get()
  if outer is not None:  # row r -> outer row r * stride + offset -> whole-batch row
    stride, offset, total = (outer.stride * stride, outer.stride * offset + outer.offset,
                             outer.total)
  token = _ROWS.set(_Rows(rows, stride, offset, total))
  try:
    yield
  finally:
    _ROWS.reset(token)


def _mapped_bits(s1, s2, shape, rows: _Rows):
  """bits() of the whole batch's array at a micro-batch's rows (see example_rows)."""
  size = int(np.prod(shape))
  if not shape or size % rows.rows:
    raise ValueError(f"counter random numbers: an array of shape {shape} does not split "
                     f"into the micro-batch's {rows.rows} example rows")
  per_row = size // rows.rows
  if per_row >= _COUNTER_LIMIT:
    raise ValueError(f"counter random numbers: an array of shape {shape} is too large")
  row = (jax.lax.iota(jnp.uint32, rows.rows) * jnp.uint32(rows.stride)
         + jnp.asarray(rows.offset).astype(jnp.uint32))[:, None]
  within = jax.lax.iota(jnp.uint32, per_row)[None, :]
  if per_row * rows.total < _COUNTER_LIMIT:
    out = _one_counter(row * jnp.uint32(per_row) + within, s1, s2)
  else:  # the whole batch's array takes bits()'s two-counter path, split after the rows
    out = _two_counters(row, within, s1, s2)
  return out.reshape(shape)


# Arrays with fewer elements than this use one 32-bit counter (module level so tests can
# exercise the two-counter path on small arrays).
_COUNTER_LIMIT = 2 ** 32


def bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """uint32 array of `shape`, uniform over all 2^32 values, from `key`.

  Arrays of 2^32 elements or more (ELECTRA-Large's attention-dropout masks at the paper's
  batch of 2048) number their elements by two counters: `hi` over the leading axes and `lo`
  over the trailing block of fewer than 2^32 elements; then

      bits(hi, lo) = mix(mix(lo ^ s1) + mix(hi ^ s2) + s2)

  which is still a bijection of `lo` for each `hi`, and sharding-independent.
  """
  shape = tuple(int(d) for d in shape)
  size = int(np.prod(shape))
  s1, s2 = jax.random.bits(key, (2,), jnp.uint32)
  rows = _ROWS.get()
  if rows is not None:
    return _mapped_bits(s1, s2, shape, rows)
  if size < _COUNTER_LIMIT:
    counter = jax.lax.iota(jnp.uint32, size).reshape(shape)
    return _one_counter(counter, s1, s2)
  split = next((k for k in range(len(shape) + 1)
                if int(np.prod(shape[k:])) < _COUNTER_LIMIT), len(shape))
  lo_size, hi_size = int(np.prod(shape[split:])), int(np.prod(shape[:split]))
  if hi_size >= _COUNTER_LIMIT:
    raise ValueError(f"counter random numbers: an array of shape {shape} is too large")
  ones = (1,) * (len(shape) - split)
  lo = jax.lax.iota(jnp.uint32, lo_size).reshape((1,) * split + shape[split:])
  hi = jax.lax.iota(jnp.uint32, hi_size).reshape(shape[:split] + ones)
  return _two_counters(hi, lo, s1, s2)


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
  """bool array, True with probability 1 - rate (exact to 2^-32): a dropout keep mask."""
  threshold = min(int(round(rate * 2.0 ** 32)), 2 ** 32 - 1)
  return bits(key, shape) >= jnp.uint32(threshold)


def uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """float32 uniform on the open interval (0, 1), 24 bits: never exactly 0 or 1."""
  top24 = (bits(key, shape) >> 8).astype(jnp.float32)
  return (top24 + 0.5) * jnp.float32(2.0 ** -24)


def randint(key: jax.Array, shape: tuple[int, ...], maxval: int) -> jax.Array:
  """int32 uniform on [0, maxval) (bits modulo maxval: bias below maxval / 2^32)."""
  if not 0 < maxval < 2 ** 31:
    raise ValueError(f"counter random numbers: maxval={maxval} is out of range")
  return (bits(key, shape) % jnp.uint32(maxval)).astype(jnp.int32)


def argmax(x: jax.Array, axis: int = -1) -> jax.Array:
  """int32 index of the first maximum along `axis`, as jnp.argmax for NaN-free input.

  Two plain reductions (max, then the smallest index attaining it), which XLA's CPU
  backend vectorises; jnp.argmax's single (value, index) reduction it does not, and
  over a [B, N, vocab] array that cost ~75 ms per ELECTRA-Small step here.
  """
  axis = axis % x.ndim
  best = jnp.max(x, axis=axis, keepdims=True)
  index = jax.lax.broadcasted_iota(jnp.int32, x.shape, axis)
  first = jnp.min(jnp.where(x == best, index, jnp.int32(x.shape[axis])), axis=axis)
  return jnp.minimum(first, x.shape[axis] - 1)  # all-NaN rows: the last index, in range
