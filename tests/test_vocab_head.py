"""The generator's output layer streamed over vocabulary chunks (electra_jax/vocab_head.py).

Every output is checked against the dense logits, computed independently in float64
NumPy: log-normaliser, argmax (first maximum, across chunk borders), the gradient of the
MLM loss, and the sample's distribution by chi-square tests, across several chunks with
a partial last one.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from electra_jax import counter_rng
from electra_jax import vocab_head as vh


def projection(seed, lead=(6, 5), vocab=1000, width=24, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return vh.VocabProjection(
      jnp.asarray(rng.normal(size=lead + (width,)), dtype),
      jnp.asarray(rng.normal(size=(vocab, width)) * 0.7, dtype),
      jnp.asarray(rng.normal(size=vocab), jnp.float32))


def dense_logits64(proj):
  return (np.asarray(proj.hidden, np.float64) @ np.asarray(proj.table, np.float64).T
          + np.asarray(proj.bias, np.float64))


def from_logits(logits):
  """A projection whose logits are exactly `logits` [..., V] (identity table)."""
  v = logits.shape[-1]
  return vh.VocabProjection(jnp.asarray(logits, jnp.float32), jnp.eye(v, dtype=jnp.float32),
                            jnp.zeros(v, jnp.float32))


@pytest.mark.parametrize("chunk", [128, 256, 2048, None])
def test_log_normalizer_and_argmax_equal_the_dense_logits(chunk):
  """1000 entries: 8, 4 or 1 chunks (the last partial for 128 and 256; None: one)."""
  proj = projection(0)
  logits = dense_logits64(proj)
  out = jax.jit(lambda p: vh.vocab_outputs(jax.random.key(0), p, chunk=chunk))(proj)
  top = logits.max(-1, keepdims=True)
  lse = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[..., 0]
  np.testing.assert_allclose(np.asarray(out.log_normalizer), lse, rtol=1e-6, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(out.argmax), logits.argmax(-1))
  # ties across chunk borders: the first maximum wins
  tied = np.zeros((2, 3, 700), np.float32)
  tied[0, :, [5, 300, 650]] = 4.0  # maxima in chunks 0, 2 and 5 (of 128)
  tied[1, :, [699, 130]] = 2.0
  best = vh.vocab_outputs(jax.random.key(0), from_logits(tied), chunk=chunk).argmax
  np.testing.assert_array_equal(np.asarray(best), [[5] * 3, [130] * 3])


@pytest.mark.parametrize("chunk", [128, 384])
def test_gradient_of_the_mlm_loss_equals_the_dense_one(chunk):
  """d/d(hidden, table, bias) of sum(w * (logsumexp - target logit)), against autodiff
  of optax's cross-entropy on the dense logits."""
  proj = projection(1, vocab=900)
  targets = jnp.asarray(np.random.default_rng(2).integers(0, 900, (6, 5)))
  w = jnp.asarray(np.random.default_rng(3).uniform(size=(6, 5)), jnp.float32)

  def streamed(h, t, b):
    p = vh.VocabProjection(h, t, b)
    out = vh.vocab_outputs(jax.random.key(1), p, chunk=chunk)
    return jnp.sum(w * (out.log_normalizer - p.target_logits(targets)))

  def dense(h, t, b):
    logits = vh.VocabProjection(h, t, b).logits()
    return jnp.sum(w * optax.softmax_cross_entropy_with_integer_labels(logits, targets))

  v1, g1 = jax.jit(jax.value_and_grad(streamed, argnums=(0, 1, 2)))(*proj)
  v2, g2 = jax.jit(jax.value_and_grad(dense, argnums=(0, 1, 2)))(*proj)
  assert float(v1) == pytest.approx(float(v2), rel=1e-6)
  for a, b in zip(g1, g2):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert float(jnp.max(jnp.abs(b))) > 1e-3  # not vacuously zero


def test_bfloat16_compute_dtype_keeps_float32_outputs_and_gradients():
  proj = projection(4, vocab=500, dtype=jnp.bfloat16)
  targets = jnp.arange(30).reshape(6, 5) * 7

  def loss(h, t, b):
    p = vh.VocabProjection(h, t, b)
    out = vh.vocab_outputs(jax.random.key(0), p, chunk=128)
    return jnp.sum(out.log_normalizer - p.target_logits(targets)), out

  # jitted: XLA then sees the whole backward pass (unjitted, each op runs alone); on CPU
  # a slots-contracting bf16 matmul, if XLA formed one, has no kernel and fails here.
  (value, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2),
                                                   has_aux=True))(*proj)
  assert out.log_normalizer.dtype == jnp.float32
  assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16, jnp.float32]
  dense = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(proj.logits(), targets))
  assert float(value) == pytest.approx(float(dense), rel=1e-5)


def test_sample_follows_the_softmax_across_chunks():
  """300 entries in chunks of 128 (3 chunks, the last partial), 60000 draws: chi-square
  against the softmax; entries of probability 0 (every 7th) are never drawn, nor is any
  entry but the one possible token when that is the vocabulary's last."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 1.5, 300).astype(np.float32)
  logits[::7] = -1e30
  logits[128:256] += 1.0  # unequal chunk masses
  tiled = jnp.tile(jnp.asarray(logits), (15000, 4, 1))  # [B, N, V] as in training
  draw = jax.jit(lambda k, x: vh.vocab_outputs(k, from_logits(x), chunk=128).sample)
  counts = np.bincount(np.asarray(draw(jax.random.key(3), tiled)).ravel(), minlength=300)
  assert counts[::7].sum() == 0
  p = np.exp(logits.astype(np.float64) - logits.max())
  p /= p.sum()
  live = p > 0
  expected = p[live] / p[live].sum() * counts.sum()
  assert stats.chisquare(counts[live], expected).pvalue > 1e-4
  only = np.full((2, 3, 300), -1e30, np.float32)
  only[..., 299] = 0.0
  assert (np.asarray(draw(jax.random.key(4), jnp.asarray(only))) == 299).all()
  first = np.full((2, 3, 300), -1e30, np.float32)
  first[..., 0] = 0.0  # the one possible token is in the first chunk
  assert (np.asarray(draw(jax.random.key(5), jnp.asarray(first))) == 0).all()


def test_temperature_and_disallowed_tokens():
  logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
  big = np.full(260, -1e30)
  big[[3, 130, 200, 259]] = logits  # the same distribution spread over 3 chunks
  tiled = jnp.tile(jnp.asarray(big, jnp.float32), (20000, 1, 1))
  ids = np.array([3, 130, 200, 259])
  sample = vh.vocab_outputs(jax.random.key(0), from_logits(tiled), chunk=128).sample
  freq = np.bincount(np.searchsorted(ids, np.asarray(sample).ravel()), minlength=4) / 20000
  np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.015)
  hot = vh.vocab_outputs(jax.random.key(0), from_logits(tiled), temperature=0.25,
                         chunk=128).sample
  assert np.mean(np.asarray(hot) == 3) > 0.85  # a low temperature sharpens
  banned = vh.vocab_outputs(jax.random.key(0), from_logits(tiled), chunk=128,
                            disallowed=jnp.full((20000, 1), 130, jnp.int32)).sample
  freq = np.bincount(np.searchsorted(ids, np.asarray(banned).ravel()), minlength=4) / 20000
  np.testing.assert_allclose(freq, [0.5 / 0.7, 0, 0.15 / 0.7, 0.05 / 0.7], atol=0.015)
  # the sample carries no gradient
  g = jax.grad(lambda x: jnp.sum(vh.vocab_outputs(jax.random.key(0), from_logits(x))
                                 .sample.astype(jnp.float32)))(tiled[:3])
  assert float(jnp.abs(g).sum()) == 0.0


def test_a_micro_batch_draws_the_whole_batch_rows():
  """Inside counter_rng.example_rows the sample of rows i::k equals the whole batch's."""
  logits = jnp.asarray(np.random.default_rng(5).normal(size=(8, 3, 400)), jnp.float32)
  key = jax.random.key(9)
  whole = vh.vocab_outputs(key, from_logits(logits), chunk=128).sample
  with counter_rng.example_rows(2, 4, 1):
    part = vh.vocab_outputs(key, from_logits(logits[1::4]), chunk=128).sample
  np.testing.assert_array_equal(np.asarray(part), np.asarray(whole)[1::4])


def test_bad_settings_are_clear_errors():
  proj = projection(0, vocab=300)
  with pytest.raises(ValueError, match="multiple of 128"):
    vh.vocab_outputs(jax.random.key(0), proj, chunk=200)
  with pytest.raises(ValueError, match="temperature must be > 0"):
    vh.vocab_outputs(jax.random.key(0), proj, temperature=0.0)


def test_training_streams_chunks_on_cpu_only():
  """The trainer picks the chunk by its devices: chunks on CPU, one chunk on accelerators
  (where the TPU compiler gave the chunk loop 1.4 GiB more per chip for ELECTRA-Base)."""
  from electra_jax import aot, parallel, train  # pylint: disable=g-import-not-at-top
  from electra_jax.config import pretrain_config  # pylint: disable=g-import-not-at-top
  assert vh.chunk_for_platform("cpu") == vh.VOCAB_CHUNK
  assert vh.chunk_for_platform("tpu") is None and vh.chunk_for_platform("gpu") is None
  c = pretrain_config("tiny")
  mesh = parallel.make_mesh(c.mesh, jax.devices()[:1])
  training = train.build_training(c, aot.StandInTokenizer(1000), mesh)
  assert jax.devices()[0].platform == "cpu"
  assert training.settings.vocab_chunk == vh.VOCAB_CHUNK
