"""Tests for electra_jax.model forward numerics: vs a NumPy reference, scan, bf16,
padding, attention, dropout.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from electra_jax import model as M

from model_helpers import (
    VOCAB, B, L, N, _disc, _model, _fill, _batch, _jit, _run,
    _np_generator_logits_all, _np_discriminator_logits, _stacked)


# ----------------------------------------------------------------- numerics


def test_matches_numpy_reference_and_gathers_masked_positions(tied):
  model, params = tied
  ids, seg, mask, pos = _batch()
  gen, dis = _run(model, params, ids, seg, mask, pos)
  assert gen.shape == (B, N, VOCAB) and gen.dtype == np.float32
  assert dis.shape == (B, L) and dis.dtype == np.float32
  # Full-sequence generator head computed independently, then gathered.
  full = _np_generator_logits_all(params, model, ids, seg, mask)
  expected = np.take_along_axis(full, np.asarray(pos)[..., None], axis=1)
  np.testing.assert_allclose(gen, expected, rtol=1e-4, atol=1e-4)
  ref = _np_discriminator_logits(params, model, ids, seg, mask)
  real = np.asarray(mask) == 1
  np.testing.assert_allclose(dis[real], ref[real], rtol=1e-4, atol=1e-4)



def test_gelu_is_the_exact_erf_gelu_with_its_derivative():
  import math
  from electra_jax import model_layers
  x = np.concatenate([np.linspace(-12, 12, 4001), [-40.0, -5.5, 0.0, 7.25, 40.0]])
  exact = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])  # float64
  slope = np.array([0.5 * (1 + math.erf(v / math.sqrt(2)))
                    + v * math.exp(-v * v / 2) / math.sqrt(2 * math.pi) for v in x])
  xj = jnp.asarray(x, jnp.float32)
  got = np.asarray(jax.jit(model_layers._gelu)(xj), np.float64)
  np.testing.assert_allclose(got, exact, rtol=2e-7, atol=2e-6)
  grad = np.asarray(jax.jit(jax.vmap(jax.grad(model_layers._gelu)))(xj), np.float64)
  np.testing.assert_allclose(grad, slope, rtol=1e-6, atol=2e-6)
  # jax.nn.gelu's erfc form agrees to the same tolerance (the formula it replaced).
  np.testing.assert_allclose(got, np.asarray(jax.nn.gelu(xj, approximate=False)), atol=2e-6)
  assert model_layers._gelu(jnp.ones((2,), jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.parametrize("shape", [(64, 24), (24, 64)])  # in > out, in < out
def test_dense_matmul_gradients_in_both_orientations(shape):
  """_token_matmul's own backward (kernel gradient formed out-rows-first when in > out)
  equals float64 NumPy, jitted, in float32 and bfloat16."""
  from electra_jax import model_layers
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, shape[0]))
  k = rng.normal(size=shape)
  g = rng.normal(size=(40, shape[1]))

  def grads(dtype):
    f = lambda x, k: jnp.sum(model_layers._token_matmul(x, k).astype(jnp.float32)
                             * jnp.asarray(g, jnp.float32))
    return jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.asarray(x, dtype), jnp.asarray(k, dtype))

  dx, dk = grads(jnp.float32)
  np.testing.assert_allclose(np.asarray(dx), g @ k.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dk), x.T @ g, rtol=1e-5, atol=1e-5)
  bx, bk = grads(jnp.bfloat16)
  assert bx.dtype == bk.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(bk, np.float64), x.T @ g, rtol=0.05, atol=0.3)


def test_scan_equals_unrolled(tied):
  model, params = tied
  scanned = _model(scan_layers=True)
  sp = _stacked(params)
  assert jax.tree_util.tree_structure(sp) == jax.tree_util.tree_structure(
      M.abstract_params(scanned))
  back = M.unstack_layer_params(sp['discriminator']['encoder'])
  jax.tree_util.tree_map(np.testing.assert_array_equal, back,
                         params['discriminator']['encoder'])
  batch = _batch()
  for a, b in zip(_run(scanned, sp, *batch), _run(model, params, *batch)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_bfloat16_compute_gives_close_float32_logits(tied):
  model, params = tied
  batch = _batch()
  (g32, d32), (g16, d16) = (_run(m, params, *batch)
                            for m in (model, _model(dtype='bfloat16')))
  assert g16.dtype == np.float32 and d16.dtype == np.float32
  assert not np.array_equal(g16, g32)  # bf16 really was used
  for lo, hi in ((g16, g32), (d16, d32)):
    err = np.abs(lo - hi).max() / np.abs(hi).max()
    assert err < 0.05, err
  assert (g16.argmax(-1) == g32.argmax(-1)).mean() > 0.8


def test_padding_does_not_change_real_positions(tied):
  model, params = tied
  ids, seg, mask, pos = _batch()
  real = np.asarray(mask) == 1
  g0, d0 = _run(model, params, ids, seg, mask, pos)
  # Different ids and segments under the pad positions.
  rng = np.random.default_rng(1)
  ids2 = jnp.where(mask == 1, ids, jnp.asarray(rng.integers(0, VOCAB, (B, L))))
  seg2 = jnp.where(mask == 1, seg, 1)
  g2, d2 = _run(model, params, ids2, seg2, mask, pos)
  np.testing.assert_allclose(g2, g0, atol=1e-5)
  np.testing.assert_allclose(d2[real], d0[real], atol=1e-5)
  # Four more pad columns, and (second call) batch rows that are all padding.
  pad = lambda a, v=0: jnp.concatenate([a, jnp.full((B, 4), v, a.dtype)], axis=1)
  ids3, seg3, mask3 = pad(ids, 7), pad(seg), pad(mask)
  g3, d3 = _run(model, params, ids3, seg3, mask3, pos)
  np.testing.assert_allclose(g3, g0, atol=1e-5)
  np.testing.assert_allclose(d3[:, :L][real], d0[real], atol=1e-5)
  outs = _run(model, params, ids3, seg3, jnp.zeros_like(mask3), pos)
  assert all(np.isfinite(x).all() for x in outs)


@pytest.mark.parametrize('heads', [3, 1])  # 1: the generator's layout without a head dim
def test_explicit_attention_matches_dot_product_attention(heads):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 6, heads, 4)), jnp.float32)
             for _ in range(3))
  mask = jnp.asarray([[1] * 6, [1, 1, 1, 0, 0, 0]], bool)[:, None, None, :]
  v2 = v.at[1, 3:].set(100.0)
  w = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
  keep = rng.random((2, heads, 6, 6)) < 0.7
  bf = lambda x: x.astype(jnp.bfloat16)
  ours_loss = lambda q, k, v: jnp.sum(w * M.explicit_attention(q, k, v, mask))
  theirs_loss = lambda q, k, v: jnp.sum(w * jax.nn.dot_product_attention(q, k, v, mask=mask))
  drop = lambda p: jnp.where(jnp.reshape(keep, p.shape), p * 2.0, 0.0)
  @_jit
  def both(q, k, v, v2):
    return (M.explicit_attention(q, k, v, mask),
            jax.nn.dot_product_attention(q, k, v, mask=mask),
            M.explicit_attention(q, k, v2, mask),
            M.explicit_attention(bf(q), bf(k), bf(v), mask).astype(jnp.float32),
            jax.nn.dot_product_attention(bf(q), bf(k), bf(v), mask=mask).astype(jnp.float32),
            jax.grad(ours_loss, (0, 1, 2))(q, k, v), jax.grad(theirs_loss, (0, 1, 2))(q, k, v),
            M.explicit_attention(q, k, v, mask, dropout=drop))
  ours, theirs, ours_v2, ours16, theirs16, d_ours, d_theirs, dropped = both(q, k, v, v2)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
  for a, b in zip(d_ours, d_theirs):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Masked keys get zero weight: changing their values changes nothing.
  np.testing.assert_allclose(ours_v2[1], ours[1], atol=1e-5)
  np.testing.assert_allclose(ours16, theirs16, atol=2e-2)
  # Independent: row 1 attends only to its first three keys; dropout takes the
  # probabilities heads-major ([B, heads, L, L], or [B, L, L] with one head).
  qn, kn, vn = (np.asarray(x, np.float64)[1] for x in (q, k, v))
  s = np.einsum('tnh,snh->nts', qn, kn)[:, :, :3] / 2.0
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(ours[1], np.einsum('nts,snh->tnh', p, vn[:3]), atol=1e-5)
  p_drop = np.where(keep[1][:, :, :3], 2 * p, 0.0)
  np.testing.assert_allclose(dropped[1], np.einsum('nts,snh->tnh', p_drop, vn[:3]), atol=1e-5)


def test_dropout_only_when_not_deterministic(tied):
  model, params = tied
  batch = _batch()
  det = _run(model, params, *batch)  # no 'dropout' rng needed
  k1, k2 = jax.random.key(1), jax.random.key(2)
  a = _run(model, params, *batch, rng=k1)
  for x, y in zip(a, _run(model, params, *batch, rng=k1)):
    np.testing.assert_array_equal(x, y)
  for x, y, z in zip(a, det, _run(model, params, *batch, rng=k2)):
    assert not np.allclose(x, y, atol=1e-3)  # generator and discriminator both drop
    assert not np.allclose(x, z, atol=1e-3)


def test_attention_probability_dropout():
  cfg = _disc(dropout_rate=0.0, attention_dropout_rate=0.5)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, cfg.hidden_size)),
                  jnp.float32)
  mask = jnp.asarray([[1] * 6, [1, 1, 1, 0, 0, 0]], bool)[:, None, None, :]
  x_padchanged = x.at[1, 3:].set(5.0)
  params = _fill(jax.eval_shape(M.SelfAttention(cfg, deterministic=True).init,
                                jax.random.key(0), x, mask))
  @_jit
  def run(params, rng):
    det = M.SelfAttention(cfg, deterministic=True).apply(params, x, mask)
    drop = M.SelfAttention(cfg, deterministic=False)
    a = drop.apply(params, x, mask, rngs={'dropout': rng})
    b = drop.apply(params, x_padchanged, mask, rngs={'dropout': rng})
    return det, a, b
  det, a, b = (np.asarray(t) for t in run(params, jax.random.key(1)))
  assert not np.allclose(a, det, atol=1e-3)
  # With dropout on, pad keys still get no weight.
  np.testing.assert_allclose(b[1, :3], a[1, :3], atol=1e-5)


def test_bfloat16_dense_accumulates_in_float32():
  """bf16 activations with the float32 kernel (as TokenDense calls it): the product and
  the kernel gradient are the float32 sums over the bf16-rounded operands, not rounded
  to bf16 (that rounding alone would be off by ~1e-3 relative); x's gradient is bf16.
  TokenDense adds its float32 bias before rounding its output to bf16 once."""
  from electra_jax import model_layers
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(256, 96)), jnp.bfloat16)
  k = jnp.asarray(rng.normal(size=(96, 48)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(256, 48)), jnp.float32)
  f = lambda x, k: jnp.sum(model_layers._token_matmul(x, k) * g)
  y = jax.jit(model_layers._token_matmul)(x, k)
  dx, dk = jax.jit(jax.grad(f, argnums=(0, 1)))(x, k)
  assert y.dtype == dk.dtype == jnp.float32 and dx.dtype == jnp.bfloat16
  x64 = np.asarray(x, np.float64)
  k16 = np.asarray(k.astype(jnp.bfloat16), np.float64)
  g16 = np.asarray(g.astype(jnp.bfloat16), np.float64)
  np.testing.assert_allclose(np.asarray(y), x64 @ k16, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(dk), x64.T @ g16, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(dx, np.float64), g16 @ k16.T, rtol=2 ** -8, atol=1e-2)
  dense = model_layers.TokenDense(48, dtype=jnp.bfloat16, param_dtype=jnp.float32,
                                  bias_init=jax.nn.initializers.normal(1.0))
  params = dense.init(jax.random.key(0), x)['params']
  out = dense.apply({'params': params}, x)
  exact = x64 @ np.asarray(params['kernel'].astype(jnp.bfloat16), np.float64) + np.asarray(
      params['bias'], np.float64)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float64), exact, rtol=2 ** -8, atol=1e-6)


def test_cpu_runs_bfloat16_attention_in_float32():
  """Built for CPU, a bfloat16 model's attention runs in float32 (XLA:CPU would convert
  its matmuls' operands anyway); elsewhere it stays bfloat16.  Same parameters, close
  logits."""
  from electra_jax import model_config
  cfg = M.EncoderConfig(vocab_size=50, hidden_size=32, embedding_size=16, num_layers=1,
                        num_heads=2, intermediate_size=64, dtype='bfloat16')
  cpu, tpu = model_config.for_platform(cfg, 'cpu'), model_config.for_platform(cfg, 'tpu')
  assert cpu.attention_compute_dtype == jnp.float32
  assert tpu.attention_compute_dtype == cfg.attention_compute_dtype == jnp.bfloat16
  assert cpu.compute_dtype == jnp.bfloat16
  f32 = model_config.for_platform(dataclasses.replace(cfg, dtype='float32'), 'cpu')
  assert f32.attention_compute_dtype == jnp.float32
  ids = jnp.asarray(np.random.default_rng(0).integers(5, 50, size=(2, 8)), jnp.int32)
  seg, mask = jnp.zeros_like(ids), jnp.ones_like(ids)

  def loss_and_grads(c, params):
    f = lambda p: jnp.sum(jnp.sin(M.ElectraEncoder(c).apply({'params': p}, ids, seg, mask)
                                  .astype(jnp.float32)))
    return jax.jit(jax.value_and_grad(f))(params)

  params = M.ElectraEncoder(cfg).init(jax.random.key(0), ids, seg, mask)['params']
  (a, _), (b, _) = (loss_and_grads(c, params) for c in (cpu, tpu))
  np.testing.assert_allclose(a, b, rtol=0.05)
  # In float32 the CPU formulation (the projection's own VJP, its split gradients) is
  # the same function as the plain one.
  f32_any = dataclasses.replace(f32, platform='')
  (a, ga), (b, gb) = (loss_and_grads(c, params) for c in (f32, f32_any))
  np.testing.assert_allclose(a, b, rtol=1e-6)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), ga, gb)


def test_training_on_cpu_builds_its_bfloat16_model_with_float32_attention():
  from electra_jax import aot, parallel, train_step
  from electra_jax.config import pretrain_config
  c = pretrain_config("tiny")
  c.model.dtype = "bfloat16"
  mesh = parallel.make_mesh(c.mesh, jax.devices()[:1])
  tr = train_step.build_training(c, aot.StandInTokenizer(100), mesh)
  assert tr.model.disc.platform == tr.model.gen.platform == "cpu"
  assert tr.model.disc.attention_compute_dtype == tr.model.gen.attention_compute_dtype == jnp.float32
  assert tr.model.disc.compute_dtype == jnp.bfloat16
