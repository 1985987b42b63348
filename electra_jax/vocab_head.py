"""The generator's output layer over the vocabulary, streamed in chunks.

The generator predicts the original token at each of the N masked slots of a row:
logits = hidden @ table^T + bias over the whole vocabulary (30522 entries).  ELECTRA
needs four things from those logits: the log-normaliser (for the MLM loss), the logit
of the original token, the argmax (for the accuracy metric) and a sample from
softmax(logits / temperature) (the replacement token).  On CPU, `vocab_outputs` computes
them chunk by chunk over the vocabulary (`VOCAB_CHUNK` entries at a time, in a scan), so
the [slots, vocab] logits never exist as one array (`chunk_for_platform`): for
ELECTRA-Small at batch 32 x 128 that array is 74 MB, and the passes over it (bias add,
exp, the sampler's block sums, argmax, and in the backward pass the softmax, its
transpose and the bias gradient) took ~13% of a CPU step while the three matmuls behind
them are 5% of its FLOPs.  A chunk's logits
(608 slots x 2048 entries, 5 MB) stay in cache; the backward pass recomputes them
(one extra [slots, hidden] x [hidden, vocab] matmul) instead of keeping them.

Sampling is exact and streamed: within a chunk, an inverse CDF over blocks of
`SAMPLE_BLOCK` entries picks an entry with probability proportional to its weight; the
running sample then switches to that entry with probability (chunk's mass) / (mass
seen so far, this chunk included), so every entry ends up drawn with probability
(its weight) / (total).  Two uniforms per slot and chunk, from counter_rng, so the
draws of a micro-batch equal the whole batch's for those rows (gradient accumulation).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from electra_jax import counter_rng

# Vocabulary entries per chunk of the scan on CPU (a multiple of SAMPLE_BLOCK).  Measured
# on ELECTRA-Small's 608 slots x 128 features: 512-4096 all within ~7%; 2048 keeps a
# chunk's logits (5 MB) in a CPU's last-level cache.
VOCAB_CHUNK = 2048
# Entries per block of the two-level inverse-CDF search inside a chunk.
SAMPLE_BLOCK = 128
# Weight subtracted from the original token's logit when disallow_correct is set
# (as the original ELECTRA code does).
DISALLOW_PENALTY = 1000.0
# Bias of the padding entries that fill the last chunk: never the maximum, never drawn.
_PAD_LOGIT = -1e30


def chunk_for_platform(platform: str) -> int | None:
  """The chunk size for devices of `platform`: VOCAB_CHUNK on CPU, else None (one chunk).

  Chunks win on a CPU, where the passes over [slots, vocab] are memory-bound and cache
  sized chunks avoid them.  On accelerators HBM bandwidth makes those passes cheap, and
  the TPU compiler gives the chunk loop more memory: ELECTRA-Base at batch 256 on v5e:2x4
  needed 7.16 GiB per chip with 2048-entry chunks, 5.78 with one (5.82 before this module).
  """
  return VOCAB_CHUNK if platform == 'cpu' else None


class VocabProjection(NamedTuple):
  """The output layer's inputs: logits = hidden @ table^T + bias, in float32.

  hidden [..., E] and table [V, E] in the compute dtype; bias [V] float32.
  """
  hidden: jax.Array
  table: jax.Array
  bias: jax.Array

  def logits(self) -> jax.Array:
    """The dense logits [..., V] float32 (for small vocabularies and tests)."""
    return jnp.einsum('...e,ve->...v', self.hidden, self.table,
                      preferred_element_type=jnp.float32).astype(jnp.float32) + self.bias

  def target_logits(self, ids: jax.Array) -> jax.Array:
    """float32 logit [...] of token ids[...] (differentiable in all three arrays)."""
    rows = jnp.take(self.table, ids, axis=0).astype(jnp.float32)
    return (jnp.sum(self.hidden.astype(jnp.float32) * rows, axis=-1)
            + jnp.take(self.bias, ids, axis=0))


class VocabOutputs(NamedTuple):
  """What the loss and the metrics need from the logits, per slot [...]."""
  log_normalizer: jax.Array  # float32 logsumexp of the logits; differentiable
  argmax: jax.Array  # int32 first index of the maximum logit
  sample: jax.Array  # int32 draw from softmax(logits / temperature); no gradient


def vocab_outputs(rng: jax.Array, proj: VocabProjection, *, temperature: float = 1.0,
                  disallowed: jax.Array | None = None,
                  chunk: int | None = VOCAB_CHUNK) -> VocabOutputs:
  """Log-normaliser, argmax and a sample of the logits `proj` defines, per slot.

  disallowed: int ids [...] to exclude from the sample (their sampling logit is lowered
  by DISALLOW_PENALTY), or None.  chunk: vocabulary entries per chunk (a multiple of
  SAMPLE_BLOCK), or None for the whole vocabulary in one.  The sample is drawn in
  float32 whatever the compute dtype, with two counter_rng uniforms per slot and chunk.
  """
  if chunk is not None and (chunk <= 0 or chunk % SAMPLE_BLOCK):
    raise ValueError(f'vocab chunk {chunk} must be a positive multiple of {SAMPLE_BLOCK}')
  if not temperature > 0:
    raise ValueError(f'sampling temperature must be > 0, got {temperature}')
  lead, width = proj.hidden.shape[:-1], proj.hidden.shape[-1]
  vocab = proj.table.shape[0]
  chunk, chunks = chunking(vocab, chunk)
  pad = chunks * chunk - vocab
  table = jnp.pad(proj.table, ((0, pad), (0, 0))).reshape(chunks, chunk, width)
  bias = jnp.pad(proj.bias.astype(jnp.float32), (0, pad),
                 constant_values=_PAD_LOGIT).reshape(chunks, chunk)
  uniforms = counter_rng.uniform(rng, lead + (chunks, 2))
  uniforms = jnp.moveaxis(uniforms.reshape(-1, chunks, 2), 1, 0)  # [chunks, S, 2]
  if disallowed is None:  # unused: the scan skips the comparison
    banned = jnp.zeros((uniforms.shape[1],), jnp.int32)
  else:
    banned = disallowed.reshape(-1).astype(jnp.int32)
  lse, best, sample = _streamed(float(temperature), disallowed is not None,
                                proj.hidden.reshape(-1, width), table, bias, uniforms,
                                banned)
  return VocabOutputs(log_normalizer=lse.reshape(lead), argmax=best.reshape(lead),
                      sample=jax.lax.stop_gradient(sample.reshape(lead)))


def chunking(vocab: int, chunk: int | None) -> tuple[int, int]:
  """(entries per chunk, number of chunks) for `vocab` entries; the last chunk is padded.

  chunk None means one chunk: the vocabulary rounded up to a multiple of SAMPLE_BLOCK.
  """
  whole = -(-vocab // SAMPLE_BLOCK) * SAMPLE_BLOCK
  chunk = whole if chunk is None else min(chunk, whole)
  return chunk, -(-vocab // chunk)


def _chunk_logits(hidden, table_chunk, bias_chunk):
  """[S, C] float32 logits of one chunk."""
  dims = (((1,), (1,)), ((), ()))
  return jax.lax.dot_general(hidden, table_chunk, dims,
                             preferred_element_type=jnp.float32) + bias_chunk


def _inverse_cdf(logits, u):
  """(index of the draw from softmax(logits) with uniform u, logsumexp), per row.

  A two-level search: the block of SAMPLE_BLOCK entries, by the cumulative block sums,
  then the entry within it.  An entry of probability 0 is never drawn, float rounding
  included: the search stops at the last block, and the last entry, with positive
  probability.  logits [S, C] with C a multiple of SAMPLE_BLOCK; u [S].
  """
  rows, width = logits.shape
  top = jnp.max(logits, axis=-1)
  weights = jnp.exp(logits - top[:, None]).reshape(rows, width // SAMPLE_BLOCK,
                                                    SAMPLE_BLOCK)
  block_sums = jnp.sum(weights, axis=-1)
  cum_blocks = jnp.cumsum(block_sums, axis=-1)
  total = cum_blocks[:, -1]
  target = u * total
  block = jnp.minimum(jnp.sum(cum_blocks <= target[:, None], axis=-1),
                      _last_positive(block_sums))
  before = jnp.take_along_axis(cum_blocks, jnp.maximum(block - 1, 0)[:, None], axis=-1)
  before = jnp.where(block > 0, before[:, 0], 0.0)
  inner = jnp.take_along_axis(weights, block[:, None, None], axis=1)[:, 0]
  cum_inner = before[:, None] + jnp.cumsum(inner, axis=-1)
  within = jnp.minimum(jnp.sum(cum_inner <= target[:, None], axis=-1),
                       _last_positive(inner))
  return block * SAMPLE_BLOCK + within, top + jnp.log(total)


def _last_positive(x):
  """Index of the last positive entry along the last axis (0 if there is none)."""
  index = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  return jnp.max(jnp.where(x > 0, index, 0), axis=-1)


def _forward(temperature, disallow, hidden, table, bias, uniforms, banned):
  """The scan over chunks: (logsumexp, argmax, sample) per slot."""
  rows, chunk = hidden.shape[0], table.shape[1]
  column = jax.lax.broadcasted_iota(jnp.int32, (rows, chunk), 1)

  def step(carry, xs):
    top, total, best_val, best_idx, seen, sample = carry
    table_c, bias_c, u, start = xs
    logits = _chunk_logits(hidden, table_c, bias_c)
    # log-normaliser, online
    chunk_top = jnp.max(logits, axis=-1)
    new_top = jnp.maximum(top, chunk_top)
    total = (total * jnp.exp(top - new_top)
             + jnp.sum(jnp.exp(logits - new_top[:, None]), axis=-1))
    # argmax: a later chunk wins only with a strictly larger value (first maximum)
    chunk_best = start + counter_rng.argmax(logits, axis=-1)
    better = chunk_top > best_val
    best_val = jnp.where(better, chunk_top, best_val)
    best_idx = jnp.where(better, chunk_best, best_idx)
    # sample: a draw within the chunk, then switch to it with prob. chunk / seen mass
    sampling = logits if temperature == 1.0 else logits / temperature
    if disallow:
      sampling = jnp.where(column + start == banned[:, None],
                           sampling - DISALLOW_PENALTY, sampling)
    within, chunk_mass = _inverse_cdf(sampling, u[:, 0])
    seen_now = jnp.logaddexp(seen, chunk_mass)
    switch = u[:, 1] < jnp.exp(chunk_mass - seen_now)
    sample = jnp.where(switch, start + within, sample)
    return (new_top, total, best_val, best_idx, seen_now, sample), None

  neg_inf = jnp.full((rows,), -jnp.inf, jnp.float32)
  zeros = jnp.zeros((rows,), jnp.int32)
  starts = jnp.arange(table.shape[0], dtype=jnp.int32) * chunk
  init = (neg_inf, jnp.zeros((rows,), jnp.float32), neg_inf, zeros, neg_inf, zeros)
  (top, total, _, best_idx, _, sample), _ = jax.lax.scan(
      step, init, (table, bias, uniforms, starts))
  return top + jnp.log(total), best_idx, sample


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _streamed(temperature, disallow, hidden, table, bias, uniforms, banned):
  return _forward(temperature, disallow, hidden, table, bias, uniforms, banned)


def _streamed_fwd(temperature, disallow, hidden, table, bias, uniforms, banned):
  outputs = _forward(temperature, disallow, hidden, table, bias, uniforms, banned)
  return outputs, (hidden, table, bias, outputs[0])


def _streamed_bwd(temperature, disallow, residuals, cotangents):
  """Gradients of the log-normaliser: softmax(logits) * g, chunk by chunk.

  Each matmul is laid out so its operands are contracted along their last (or the
  right-hand side's first) dimension, which XLA:CPU runs at full speed; the kernel
  gradient is formed transposed ([E, C]) for that reason.
  """
  del temperature, disallow
  hidden, table, bias, lse = residuals
  g = cotangents[0]
  compute = hidden.dtype
  # The barriers keep XLA from folding the transposes back into the matmuls (which
  # would contract the slots dim of both operands: Eigen's slow path on CPU, and no
  # bf16 x bf16 -> f32 kernel there at all).
  hidden_t = jax.lax.optimization_barrier(hidden.T)  # [E, S], small

  def step(d_hidden, xs):
    table_c, bias_c = xs
    logits = _chunk_logits(hidden, table_c, bias_c)
    p = jnp.exp(logits - lse[:, None]) * g[:, None]  # [S, C]
    pc = p.astype(compute)
    d_hidden = d_hidden + jnp.dot(pc, table_c, preferred_element_type=jnp.float32)
    d_table_t = jnp.dot(hidden_t, pc, preferred_element_type=jnp.float32)  # [E, C]
    d_table = jax.lax.optimization_barrier(d_table_t).T
    return d_hidden, (d_table.astype(table.dtype), jnp.sum(p, axis=0))

  d_hidden, (d_table, d_bias) = jax.lax.scan(
      step, jnp.zeros(hidden.shape, jnp.float32), (table, bias))
  return d_hidden.astype(compute), d_table, d_bias.astype(bias.dtype), None, None


_streamed.defvjp(_streamed_fwd, _streamed_bwd)
