"""Tests for electra_jax.model: sizes, param counts and trees, configs, init."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from electra_jax import model as M
from electra_jax.errors import UserInputError

from model_helpers import _disc, _jit, _model


# ----------------------------------------------------------------- sizes and configs


def _analytic_disc_params(v, h, e, layers, ffn, pos=512, types=2):
  """Independent count of ELECTRA discriminator params (embeddings + encoder + head)."""
  embeddings = (v + pos + types) * e + 2 * e
  project = (e * h + h) if e != h else 0
  layer = (4 * (h * h + h)       # query, key, value, attention output dense
           + 2 * h               # attention output LayerNorm
           + h * ffn + ffn       # intermediate dense
           + ffn * h + h         # output dense
           + 2 * h)              # output LayerNorm
  head = (h * h + h) + (h + 1)  # discriminator_predictions dense + dense_prediction
  return embeddings + project + layers * layer + head


@pytest.mark.parametrize('size', ['small', 'base'])
def test_discriminator_param_count_matches_formula(size):
  disc = M.EncoderConfig(vocab_size=30522, **M.SIZES[size])
  model = M.ElectraPretrainingModel(disc, M.generator_config(disc, M.GENERATOR_SIZE[size]))
  params = M.abstract_params(model)
  count = M.discriminator_param_count(params)
  s = M.SIZES[size]
  expected = _analytic_disc_params(30522, s['hidden_size'], s['embedding_size'],
                                   s['num_layers'], s['intermediate_size'])
  print(f'ELECTRA-{size} discriminator params (vocab 30522): {count:,}; '
        f'with generator: {M.count_params(params):,}')
  assert count == expected
  assert M.discriminator_param_count({'params': params}) == count
  assert (13_000_000 < count < 14_000_000) if size == 'small' else (
      105_000_000 < count < 115_000_000)
  # Sizes equal -> no embeddings_project (base); differ -> one per tower (small).
  assert ('embeddings_project' in params['discriminator']) == (size == 'small')
  assert 'embeddings_project' in params['generator']


def test_param_tree_names():
  model = _model(scan_layers=True)
  p = M.abstract_params(model)
  assert set(p) == {'embeddings', 'generator', 'discriminator'}
  assert set(p['embeddings']) == {'word_embeddings', 'position_embeddings',
                                  'token_type_embeddings', 'LayerNorm'}
  assert set(p['generator']) == {'embeddings_project', 'encoder', 'generator_predictions',
                                 'output_bias'}
  assert set(p['generator']['generator_predictions']) == {'dense', 'LayerNorm'}
  assert set(p['discriminator']) == {'embeddings_project', 'encoder',
                                     'discriminator_predictions'}
  assert set(p['discriminator']['discriminator_predictions']) == {'dense',
                                                                  'dense_prediction'}
  layer = p['discriminator']['encoder']['layer']
  assert set(layer) == {'attention', 'intermediate', 'output'}
  assert set(layer['attention']) == {'self', 'output'}
  assert set(layer['attention']['self']) == {'query', 'key', 'value'}
  assert layer['attention']['self']['query']['kernel'].shape == (2, 32, 32)
  assert p['generator']['encoder']['layer']['intermediate']['dense']['kernel'].shape == (
      2, 16, 64)
  unrolled = M.abstract_params(_model())
  assert set(unrolled['discriminator']['encoder']) == {'layer_0', 'layer_1'}
  untied = M.abstract_params(_model('untied'))
  assert set(untied) == {'embeddings', 'generator_embeddings', 'generator', 'discriminator'}
  assert jax.tree_util.tree_structure(untied['generator_embeddings']) == (
      jax.tree_util.tree_structure(untied['embeddings']))


def test_generator_config_follows_the_paper_rule():
  for size, (hidden, heads) in {'small': (64, 1), 'base': (256, 4),
                                'large': (256, 4)}.items():
    disc = M.EncoderConfig(vocab_size=100, **M.SIZES[size])
    gen = M.generator_config(disc, M.GENERATOR_SIZE[size])
    assert (gen.hidden_size, gen.num_heads, gen.intermediate_size) == (
        hidden, heads, 4 * hidden)
    assert (gen.num_layers, gen.embedding_size) == (disc.num_layers, disc.embedding_size)
  with pytest.raises(UserInputError, match='generator_size'):
    M.generator_config(disc, 0.0)


def test_encoder_config_from_configdict():
  c = ml_collections.ConfigDict(dict(
      size='tiny', generator_size=0.25, embedding_sharing='tied', dtype='bfloat16',
      remat='dots', **M.SIZES['tiny']))
  cfg = M.encoder_config_from(c, vocab_size=123)
  assert cfg == M.EncoderConfig(vocab_size=123, dtype='bfloat16', remat='dots',
                                **M.SIZES['tiny'])
  del c['num_heads']
  with pytest.raises(UserInputError, match='num_heads'):
    M.encoder_config_from(c, vocab_size=123)


@pytest.mark.parametrize('kw, match', [
    (dict(num_heads=3), 'divisible'),
    (dict(dtype='float16'), 'dtype'),
    (dict(remat='some'), 'remat'),
    (dict(dropout_rate=1.0), 'dropout_rate'),
    (dict(num_layers=0), 'num_layers'),
])
def test_bad_config_is_a_user_error(kw, match):
  with pytest.raises(UserInputError, match=match):
    _disc(**kw)


def test_tied_needs_matching_embedding_shapes_and_long_inputs_fail():
  disc = _disc()
  gen = dataclasses.replace(M.generator_config(disc, 0.5), embedding_size=8)
  with pytest.raises(UserInputError, match='embedding_size'):
    M.abstract_params(M.ElectraPretrainingModel(disc, gen))
  M.abstract_params(M.ElectraPretrainingModel(disc, gen, embedding_sharing='untied'))
  with pytest.raises(UserInputError, match='embedding_sharing'):
    M.abstract_params(M.ElectraPretrainingModel(disc, gen, embedding_sharing='shared'))
  with pytest.raises(UserInputError, match='max_position_embeddings'):
    M.abstract_params(_model(), seq_len=17)


def test_init_distribution():
  disc = _disc(hidden_size=128, embedding_size=128, num_heads=2, intermediate_size=512,
               scan_layers=True)
  model = M.ElectraPretrainingModel(disc, M.generator_config(disc, 0.25))
  ids = jnp.zeros((1, 4), jnp.int32)
  p = _jit(model.init)({'params': jax.random.key(0)}, ids, ids, ids + 1, ids)['params']
  for path, x in jax.tree_util.tree_leaves_with_path(p):
    name, x = jax.tree_util.keystr(path), np.asarray(x)
    assert x.dtype == np.float32, name
    if name.endswith("['scale']"):
      np.testing.assert_array_equal(x, 1.0, err_msg=name)
    elif name.endswith("['bias']") or name.endswith("['output_bias']"):
      np.testing.assert_array_equal(x, 0.0, err_msg=name)
    elif x.size >= 1000:
      # Truncated at 2 stddev of N(0, 0.02^2): std of the truncated law is 0.0176.
      assert np.abs(x).max() <= 0.04 + 1e-6, name
      assert 0.016 < x.std() < 0.0195, (name, x.std())
  # Scanned layers and sibling kernels get different draws.
  ffn = p['discriminator']['encoder']['layer']['intermediate']['dense']['kernel']
  assert ffn.shape == (2, 128, 512) and not np.allclose(ffn[0], ffn[1])
  q = p['generator']['encoder']['layer']['attention']['self']['query']['kernel']
  k = p['generator']['encoder']['layer']['attention']['self']['key']['kernel']
  assert not np.allclose(q, k)
