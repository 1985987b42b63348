"""Tests for electra_jax.model: pretraining objectives' heads and GDES embedding
sharing.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from electra_jax import model as M
from electra_jax.errors import UserInputError

from model_helpers import (
    VOCAB, B, L, N, _disc, _model, _random_params, _batch, _jit,
    _np_generator_logits_all, _np_discriminator_logits, _np_main_mlm_logits_all)


# ----------------------------------------------------------------- objectives and GDES


def test_param_tree_per_objective_and_sharing():
  electra = M.abstract_params(_model())
  for objective, disc_heads in [
      ('electra_15', {'discriminator_predictions'}),
      ('replace_mlm', {'mlm_predictions', 'mlm_output_bias'}),
      ('all_tokens_mlm', {'discriminator_predictions', 'mlm_predictions', 'mlm_output_bias'}),
      ('mlm', {'mlm_predictions', 'mlm_output_bias'})]:
    p = M.abstract_params(_model(objective=objective))
    assert set(p['discriminator']) == {'embeddings_project', 'encoder'} | disc_heads
    if objective == 'mlm':
      assert set(p) == {'embeddings', 'discriminator'}  # no generator at all
      assert M.discriminator_param_count(p) == M.count_params(p)
    else:
      assert set(p) == {'embeddings', 'generator', 'discriminator'}
      # The generator and the shared parts keep the electra layout and shapes.
      for key in ('embeddings', 'generator'):
        assert jax.tree_util.tree_map(lambda a: a.shape, p[key]) == (
            jax.tree_util.tree_map(lambda a: a.shape, electra[key]))
    if 'mlm_predictions' in disc_heads:
      head = p['discriminator']['mlm_predictions']
      assert head['dense']['kernel'].shape == (32, 24)  # hidden -> embedding_size
      assert head['LayerNorm']['scale'].shape == (24,)
      assert p['discriminator']['mlm_output_bias'].shape == (VOCAB,)
  gdes = M.abstract_params(_model('gdes'))
  assert set(gdes) == {'embeddings', 'embeddings_delta', 'generator', 'discriminator'}
  assert jax.tree_util.tree_structure(gdes['embeddings_delta']) == (
      jax.tree_util.tree_structure(gdes['embeddings']))
  # gdes: the discriminator's block is shared + delta, counted once.
  assert M.discriminator_param_count(gdes) == M.discriminator_param_count(electra)


def test_objective_and_sharing_errors():
  with pytest.raises(UserInputError, match='objective must be one of'):
    M.abstract_params(_model(objective='bert'))
  for sharing in ('untied', 'gdes'):
    with pytest.raises(UserInputError, match="no generator, so embedding_sharing must be 'tied'"):
      M.abstract_params(_model(sharing, objective='mlm'))
  disc = _disc()
  gen = dataclasses.replace(M.generator_config(disc, 0.5), embedding_size=8)
  with pytest.raises(UserInputError, match='gdes embeddings need the same embedding_size'):
    M.abstract_params(M.ElectraPretrainingModel(disc, gen, 'gdes'))
  with pytest.raises(UserInputError, match='embedding_sharing'):
    M.encoder_restore_target(disc, 'shared')


def test_main_model_mlm_and_copy_heads_match_numpy_reference():
  model = _model('gdes', objective='all_tokens_mlm')
  params = _random_params(model, seed=5)  # a non-zero delta too
  ids, seg, mask, pos = _batch()

  @_jit
  def heads(p):
    apply = functools.partial(model.apply, {'params': p}, deterministic=True)
    at_slots = apply(ids, seg, mask, pos, method=M.ElectraPretrainingModel.model_mlm_logits)
    every, copy = apply(ids, seg, mask, method=M.ElectraPretrainingModel.all_tokens_logits)
    rtd = apply(ids, seg, mask, method=M.ElectraPretrainingModel.discriminator_logits)
    return at_slots, every, copy, rtd

  at_slots, every, copy, rtd = (np.asarray(x) for x in heads(params))
  assert at_slots.shape == (B, N, VOCAB) and every.shape == (B, L, VOCAB)
  assert copy.shape == (B, L) and all(x.dtype == np.float32 for x in (at_slots, every, copy))
  real = np.asarray(mask) == 1
  full = _np_main_mlm_logits_all(params, model, ids, seg, mask)
  np.testing.assert_allclose(every[real], full[real], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
      at_slots, np.take_along_axis(full, np.asarray(pos)[..., None], axis=1),
      rtol=1e-4, atol=1e-4)
  # The copy head is discriminator_predictions on the same pass.
  ref = _np_discriminator_logits(params, model, ids, seg, mask)
  np.testing.assert_allclose(copy[real], ref[real], rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(copy, rtd)


def test_gdes_equals_tied_at_init_and_disc_loss_never_moves_shared_embeddings():
  tied, gdes = _model(num_layers=1), _model('gdes', num_layers=1)  # one layer: fast compile
  ids, seg, mask, pos = _batch()
  labels = jnp.asarray(np.random.default_rng(0).random((B, L)) < 0.3)

  def disc_loss(p):
    d = gdes.apply({'params': p}, ids, seg, mask, deterministic=True,
                   method=M.ElectraPretrainingModel.discriminator_logits)
    return jnp.sum((jnp.logaddexp(0.0, d) - labels * d) * mask) / jnp.sum(mask)

  def gen_loss(p):
    g = gdes.apply({'params': p}, ids, seg, mask, pos, deterministic=True,
                   method=M.ElectraPretrainingModel.generator_logits)
    return -jnp.mean(jax.nn.log_softmax(g)[..., 0])

  @_jit
  def run(key):
    p = gdes.init(key, ids, seg, mask, pos)['params']
    return p, gdes.apply({'params': p}, ids, seg, mask, pos), jax.grad(disc_loss)(p), (
        jax.grad(gen_loss)(p))

  params, (gen, dis), disc_grads, gen_grads = run(jax.random.key(0))
  # At init the delta is zero, so gdes computes what tied computes with the same weights.
  assert all(not np.asarray(x).any() for x in jax.tree_util.tree_leaves(
      params['embeddings_delta']))
  as_tied = {k: v for k, v in params.items() if k != 'embeddings_delta'}
  assert jax.tree_util.tree_structure(as_tied) == jax.tree_util.tree_structure(
      M.abstract_params(tied))
  full = _np_generator_logits_all(as_tied, tied, ids, seg, mask)
  np.testing.assert_allclose(gen, np.take_along_axis(full, np.asarray(pos)[..., None], axis=1),
                             rtol=1e-4, atol=1e-4)
  real = np.asarray(mask) == 1
  np.testing.assert_allclose(
      np.asarray(dis)[real], _np_discriminator_logits(as_tied, tied, ids, seg, mask)[real],
      rtol=1e-4, atol=1e-4)
  # The discriminator loss alone: exactly zero into the shared block, a gradient into
  # every leaf of the delta.
  assert all(not np.asarray(x).any() for x in jax.tree_util.tree_leaves(
      disc_grads['embeddings']))
  assert all(np.abs(np.asarray(x)).max() > 0 for x in jax.tree_util.tree_leaves(
      disc_grads['embeddings_delta']))
  assert len(jax.tree_util.tree_leaves(disc_grads['embeddings_delta'])) == 5
  # The generator loss trains the shared block and never the delta.
  assert all(not np.asarray(x).any() for x in jax.tree_util.tree_leaves(
      gen_grads['embeddings_delta']))
  assert all(np.abs(np.asarray(x)).max() > 0 for x in jax.tree_util.tree_leaves(
      gen_grads['embeddings']))


def test_encoder_params_fold_the_gdes_delta_and_drop_every_head():
  model = _model('gdes', objective='all_tokens_mlm')
  params = _random_params(model, seed=6)
  enc = M.ElectraEncoder(model.disc)
  enc_params = M.encoder_params_from_pretraining({'params': params})
  assert jax.tree_util.tree_structure(enc_params) == jax.tree_util.tree_structure(
      M.abstract_params(enc))
  for path, leaf in jax.tree_util.tree_leaves_with_path(enc_params['embeddings']):
    get = lambda tree: functools.reduce(lambda t, k: t[k.key], path, tree)
    np.testing.assert_array_equal(leaf, np.asarray(get(params['embeddings']))
                                  + np.asarray(get(params['embeddings_delta'])))
  # The restore target is what the fold reads: the encoder tree plus the delta.
  target = M.encoder_restore_target(model.disc, 'gdes')
  assert set(target) == {'embeddings', 'embeddings_delta', 'discriminator'}
  sub = {k: params[k] for k in ('embeddings', 'embeddings_delta')}
  sub['discriminator'] = {k: params['discriminator'][k]
                          for k in target['discriminator']}
  assert jax.tree_util.tree_structure(sub) == jax.tree_util.tree_structure(target)
  ids, seg, mask, _ = _batch()
  h_enc = _jit(lambda p: enc.apply({'params': p}, ids, seg, mask))(enc_params)
  h_model = _jit(lambda p: model.apply(
      {'params': p}, ids, seg, mask, deterministic=True,
      method=M.ElectraPretrainingModel.discriminator_hidden))(params)
  np.testing.assert_allclose(h_enc, h_model, rtol=1e-6, atol=1e-6)
  # mlm objective: the MLM head is dropped too.
  mlm = _model(objective='mlm')
  enc_tree = M.encoder_params_from_pretraining(M.abstract_params(mlm))
  assert set(enc_tree['discriminator']) == {'embeddings_project', 'encoder'}
