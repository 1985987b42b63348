"""Tests for electra_jax.model: embedding sharing, remat, encoder loading, and
gradients vs finite differences of a NumPy reference.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from electra_jax import model as M

from model_helpers import (
    VOCAB, B, L, N, _model, _random_params, _batch, _jit, _run, _np_tower,
    _np_generator_logits_all, _np_discriminator_logits, _stacked)


# ----------------------------------------------------------------- sharing and gradients


def test_tied_generator_uses_shared_word_table(tied):
  model, params = tied
  ids, seg, mask, pos = _batch()
  def loss(p):
    logits = model.apply({'params': p}, ids, seg, mask, pos, deterministic=True,
                         method=M.ElectraPretrainingModel.generator_logits)
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])
  grads = _jit(jax.grad(loss))(params)
  assert 'generator_embeddings' not in grads
  rows = np.linalg.norm(np.asarray(grads['embeddings']['word_embeddings']['embedding']),
                        axis=-1)
  unused = np.setdiff1d(np.arange(VOCAB), np.asarray(ids))
  # Rows never fed as input get gradient only through the output projection.
  assert len(unused) > 10 and (rows[unused] > 0).all()
  for name in ('LayerNorm', 'position_embeddings', 'token_type_embeddings'):
    assert max(np.abs(x).max() for x in jax.tree_util.tree_leaves(
        grads['embeddings'][name])) > 0, name
  # The generator loss does not touch the discriminator.
  assert all(np.all(x == 0) for x in jax.tree_util.tree_leaves(grads['discriminator']))


def test_untied_generator_has_its_own_table():
  model = _model('untied')
  params = _random_params(model, seed=3)
  ids, seg, mask, pos = _batch()
  gen, dis = _run(model, params, ids, seg, mask, pos)
  full = _np_generator_logits_all(params, model, ids, seg, mask)
  expected = np.take_along_axis(full, np.asarray(pos)[..., None], axis=1)
  np.testing.assert_allclose(gen, expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dis, _np_discriminator_logits(params, model, ids, seg, mask),
                             rtol=1e-4, atol=1e-4)
  # Each tower reads only its own block: scaling one block moves one tower.
  scale = lambda tree: jax.tree_util.tree_map(lambda x: 0.5 * x, tree)
  g2, d2 = _run(model, dict(params, embeddings=scale(params['embeddings'])), ids, seg,
                mask, pos)
  np.testing.assert_array_equal(g2, gen)
  assert not np.allclose(d2, dis)
  g3, d3 = _run(model, dict(params, generator_embeddings=scale(
      params['generator_embeddings'])), ids, seg, mask, pos)
  np.testing.assert_array_equal(d3, dis)
  assert not np.allclose(g3, gen)


def test_remat_gives_same_outputs_and_grads(tied):
  _, params = tied
  sp = _stacked(params)
  ids, seg, mask, _ = _batch()
  results, matmuls = {}, {}
  for remat in ('none', 'full', 'dots'):
    model = _model(scan_layers=True, remat=remat)
    def loss(p, model=model):
      d = model.apply({'params': p}, ids, seg, mask, deterministic=False,
                      rngs={'dropout': jax.random.key(5)},
                      method=M.ElectraPretrainingModel.discriminator_logits)
      return jnp.mean(jnp.tanh(d) * mask)
    results[remat] = _jit(jax.value_and_grad(loss))(sp)
    lowered = jax.jit(jax.value_and_grad(loss)).lower(sp).as_text()
    matmuls[remat] = lowered.count('stablehlo.dot_general')
  # 'dots' keeps every projection's output (the dense layers' named ones included):
  # only the attention scores are recomputed, never a dense layer's matmul.
  assert matmuls['none'] < matmuls['dots'] < matmuls['full']
  assert matmuls['dots'] - matmuls['none'] == 1  # the scores (the layer body is scanned)
  value, grads = results['none']
  query = np.asarray(grads['discriminator']['encoder']['layer']['attention']['self'][
      'query']['kernel'])
  assert (np.abs(query).max(axis=(1, 2)) > 0).all()  # both layers get gradient
  for remat in ('full', 'dots'):
    v2, g2 = results[remat]
    np.testing.assert_allclose(v2, value, rtol=1e-6)
    jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-4,
                                             atol=1e-6), g2, grads)


def test_electra_encoder_loads_pretraining_params(tied):
  model, params = tied
  disc = model.disc
  enc = M.ElectraEncoder(disc)
  enc_params = M.encoder_params_from_pretraining({'params': params})
  assert jax.tree_util.tree_structure(enc_params) == jax.tree_util.tree_structure(
      M.abstract_params(enc))
  ids, seg, mask, _ = _batch()
  h = np.asarray(_jit(lambda p: enc.apply({'params': p}, ids, seg, mask))(enc_params))
  assert h.shape == (B, L, disc.hidden_size)
  ref = _np_tower(params['embeddings'], params['discriminator'], disc, ids, seg, mask)
  real = np.asarray(mask) == 1
  np.testing.assert_allclose(h[real], ref[real], rtol=1e-4, atol=1e-4)


def _np_loss(params, model, ids, seg, mask, pos, labels, targets):
  """float64 NumPy pretraining-style loss: disc sigmoid CE + generator softmax CE."""
  real = np.asarray(mask, np.float64)
  d = _np_discriminator_logits(params, model, ids, seg, mask)
  y = np.asarray(labels, np.float64)
  disc = np.sum((np.logaddexp(0.0, d) - y * d) * real) / real.sum()
  g = np.take_along_axis(_np_generator_logits_all(params, model, ids, seg, mask),
                         np.asarray(pos)[..., None], axis=1)
  logp = g - g.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  gen = -np.take_along_axis(logp, np.asarray(targets)[..., None], axis=-1).mean()
  return disc + gen


@pytest.mark.parametrize('init', ['model_init', 'large_random'])
def test_gradients_match_finite_differences_of_numpy_reference(init):
  # Directional derivatives of jax.grad vs central differences of the independent float64
  # forward, per parameter group, at the real init scale (std 0.02, where layer-0
  # attention gradients are ~1e-8) and at large random values.
  model = _model()
  ids, seg, mask, pos = _batch()
  if init == 'model_init':
    params = _jit(model.init)(jax.random.key(0), ids, seg, mask, pos)['params']
  else:
    params = _random_params(model, seed=4)
  rng = np.random.default_rng(0)
  labels = jnp.asarray(rng.random((B, L)) < 0.3)
  targets = jnp.asarray(rng.integers(5, VOCAB, (B, N)), jnp.int32)

  def loss(p):
    d = model.apply({'params': p}, ids, seg, mask, deterministic=True,
                    method=M.ElectraPretrainingModel.discriminator_logits)
    w = mask.astype(jnp.float32)
    disc = jnp.sum((jnp.logaddexp(0.0, d) - labels * d) * w) / jnp.sum(w)
    g = model.apply({'params': p}, ids, seg, mask, pos, deterministic=True,
                    method=M.ElectraPretrainingModel.generator_logits)
    gen = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(g), targets[..., None], -1))
    return disc + gen

  grads = _jit(jax.grad(loss))(params)
  p64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  groups = [
      ('discriminator', 'encoder', 'layer_0', 'attention', 'self', 'query', 'kernel'),
      ('discriminator', 'encoder', 'layer_0', 'attention', 'self', 'key', 'kernel'),
      ('discriminator', 'encoder', 'layer_1', 'attention', 'self', 'value', 'kernel'),
      ('discriminator', 'embeddings_project', 'kernel'),
      ('discriminator', 'discriminator_predictions', 'dense', 'kernel'),
      ('generator', 'encoder', 'layer_1', 'attention', 'self', 'query', 'kernel'),
      ('generator', 'generator_predictions', 'LayerNorm', 'scale'),
      ('embeddings', 'position_embeddings', 'embedding'),
      ('embeddings', 'word_embeddings', 'embedding'),
      ('embeddings', 'LayerNorm', 'bias'),
  ]
  get = lambda tree, path: functools.reduce(lambda t, k: t[k], path, tree)
  for path in groups:
    g = np.asarray(get(grads, path), np.float64)
    assert np.abs(g).max() > 0, path
    # Probe along the gradient itself (the largest directional derivative) and along a
    # random direction; both scaled to the group's size.
    for direction in (g, rng.standard_normal(g.shape)):
      u = direction / np.linalg.norm(direction)
      eps = 1e-4 * max(np.linalg.norm(get(p64, path)), 1e-2)
      def shifted(sign):
        tree = jax.tree_util.tree_map(lambda a: a, p64)
        leaf = get(tree, path[:-1])
        leaf[path[-1]] = get(p64, path) + sign * eps * u
        return _np_loss(tree, model, ids, seg, mask, pos, labels, targets)
      numeric = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
      analytic = float(np.sum(g * u))
      scale = np.linalg.norm(g)  # errors relative to the group's gradient norm
      assert abs(analytic - numeric) <= 2e-3 * scale + 1e-12, (path, analytic, numeric, scale)
