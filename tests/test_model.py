"""Tests for electra_jax.model: shapes, param counts, numerics vs a NumPy reference."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from electra_jax import model as M
from electra_jax.errors import UserInputError

VOCAB = 64
B, L, N = 3, 8, 3
_erf = np.vectorize(math.erf)


def _disc(**kw):
  base = dict(vocab_size=VOCAB, hidden_size=32, embedding_size=24, num_layers=2,
              num_heads=2, intermediate_size=64, max_position_embeddings=16,
              scan_layers=False)
  base.update(kw)
  return M.EncoderConfig(**base)


def _model(embedding_sharing='tied', objective='electra', **kw):
  disc = _disc(**kw)
  gen = None if objective == 'mlm' else M.generator_config(disc, 0.5)
  return M.ElectraPretrainingModel(disc, gen, embedding_sharing=embedding_sharing,
                                   objective=objective)


def _random_params(model, seed=0):
  """Params with the model's shapes and non-trivial values (no XLA compile needed)."""
  return _fill(M.abstract_params(model), seed)


def _fill(abstract, seed=0):
  rng = np.random.default_rng(seed)
  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      x = 1.0 + 0.1 * rng.standard_normal(s.shape)
    elif name.endswith("['bias']") or name.endswith("['output_bias']"):
      x = 0.1 * rng.standard_normal(s.shape)
    else:
      x = 0.2 * rng.standard_normal(s.shape)
    return jnp.asarray(x, jnp.float32)
  return jax.tree_util.tree_map_with_path(fill, abstract)


def _batch(seed=0, lengths=(8, 5, 3)):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, 20, size=(B, L))
  mask = (np.arange(L)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
  ids = np.where(mask == 1, ids, 0)
  seg = np.where(np.arange(L)[None] >= 2, 1, 0) * mask
  pos = np.stack([rng.choice(n, size=N, replace=n < N) for n in lengths])
  return tuple(jnp.asarray(a, jnp.int32) for a in (ids, seg, mask, pos))


# Tests check values, not speed: skip XLA's costly backend passes to compile faster.
_jit = functools.partial(jax.jit, compiler_options={
    'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True})


@functools.lru_cache(maxsize=None)
def _forward(model):
  """jit(model.apply) -> (generator_logits, discriminator_logits); one compile per model."""
  def f(params, ids, seg, mask, pos, rng=None):
    rngs = {} if rng is None else {'dropout': rng}
    return model.apply({'params': params}, ids, seg, mask, pos,
                       deterministic=rng is None, rngs=rngs)
  return _jit(f)


def _run(model, params, ids, seg, mask, pos, rng=None):
  return tuple(np.asarray(x) for x in _forward(model)(params, ids, seg, mask, pos, rng))


# ----------------------------------------------------------------- NumPy reference


def _np_ln(x, p, eps=1e-12):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p['scale'] + p['bias']


def _np_dense(x, p):
  return x @ p['kernel'] + p['bias']


def _np_gelu(x):
  return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _np_tower(emb, tower, cfg, ids, seg, mask):
  """Post-LN BERT in float64 from the unrolled param layout -> hidden [B, L, H]."""
  t = lambda tree: jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)
  emb, tower = t(emb), t(tower)
  ids, seg, mask = (np.asarray(a) for a in (ids, seg, mask))
  x = (emb['word_embeddings']['embedding'][ids]
       + emb['position_embeddings']['embedding'][np.arange(ids.shape[1])][None]
       + emb['token_type_embeddings']['embedding'][seg])
  x = _np_ln(x, emb['LayerNorm'])
  if 'embeddings_project' in tower:
    x = _np_dense(x, tower['embeddings_project'])
  nh, hd = cfg.num_heads, cfg.hidden_size // cfg.num_heads
  for i in range(cfg.num_layers):
    lp = tower['encoder'][f'layer_{i}']
    sa = lp['attention']['self']
    heads = lambda y: y.reshape(y.shape[0], y.shape[1], nh, hd).transpose(0, 2, 1, 3)
    q, k, v = (heads(_np_dense(x, sa[n])) for n in ('query', 'key', 'value'))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
    s = np.where(mask[:, None, None, :] == 1, s, -np.inf)
    s = s - s.max(-1, keepdims=True)
    pr = np.exp(s)
    pr /= pr.sum(-1, keepdims=True)
    a = (pr @ v).transpose(0, 2, 1, 3).reshape(x.shape)
    x = _np_ln(x + _np_dense(a, lp['attention']['output']['dense']),
               lp['attention']['output']['LayerNorm'])
    h = _np_gelu(_np_dense(x, lp['intermediate']['dense']))
    x = _np_ln(x + _np_dense(h, lp['output']['dense']), lp['output']['LayerNorm'])
  return x


def _np_generator_logits_all(params, model, ids, seg, mask):
  """Generator MLM logits at EVERY position [B, L, V] (float64)."""
  emb_name = 'generator_embeddings' if model.embedding_sharing == 'untied' else 'embeddings'
  emb = params[emb_name]
  gen = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params['generator'])
  h = _np_tower(emb, gen, model.gen, ids, seg, mask)
  h = _np_ln(_np_gelu(_np_dense(h, gen['generator_predictions']['dense'])),
             gen['generator_predictions']['LayerNorm'])
  table = np.asarray(emb['word_embeddings']['embedding'], np.float64)
  return h @ table.T + gen['output_bias']


def _np_disc_embeddings(params):
  """The discriminator's embedding block: shared, plus the delta under gdes (float64)."""
  emb = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params['embeddings'])
  if 'embeddings_delta' in params:
    emb = jax.tree_util.tree_map(lambda a, d: a + np.asarray(d, np.float64), emb,
                                 params['embeddings_delta'])
  return emb


def _np_discriminator_logits(params, model, ids, seg, mask):
  d = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params['discriminator'])
  h = _np_tower(_np_disc_embeddings(params), d, model.disc, ids, seg, mask)
  h = _np_gelu(_np_dense(h, d['discriminator_predictions']['dense']))
  return _np_dense(h, d['discriminator_predictions']['dense_prediction'])[..., 0]


def _np_main_mlm_logits_all(params, model, ids, seg, mask):
  """The main model's MLM head at EVERY position [B, L, V] (float64)."""
  emb = _np_disc_embeddings(params)
  d = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params['discriminator'])
  h = _np_tower(emb, d, model.disc, ids, seg, mask)
  h = _np_ln(_np_gelu(_np_dense(h, d['mlm_predictions']['dense'])),
             d['mlm_predictions']['LayerNorm'])
  return h @ emb['word_embeddings']['embedding'].T + d['mlm_output_bias']


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope='module')
def tied():
  model = _model()
  return model, _random_params(model)


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


def _stacked(params):
  """Unrolled (layer_i) params -> the scan layout."""
  sp = dict(params)
  for tower in ('generator', 'discriminator'):
    sp[tower] = dict(params[tower], encoder=M.stack_layer_params(params[tower]['encoder']))
  return sp


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


def test_explicit_attention_matches_dot_product_attention():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 6, 3, 4)), jnp.float32) for _ in range(3))
  mask = jnp.asarray([[1] * 6, [1, 1, 1, 0, 0, 0]], bool)[:, None, None, :]
  v2 = v.at[1, 3:].set(100.0)
  bf = lambda x: x.astype(jnp.bfloat16)
  @_jit
  def both(q, k, v, v2):
    return (M.explicit_attention(q, k, v, mask),
            jax.nn.dot_product_attention(q, k, v, mask=mask),
            M.explicit_attention(q, k, v2, mask),
            M.explicit_attention(bf(q), bf(k), bf(v), mask).astype(jnp.float32),
            jax.nn.dot_product_attention(bf(q), bf(k), bf(v), mask=mask).astype(jnp.float32))
  ours, theirs, ours_v2, ours16, theirs16 = both(q, k, v, v2)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
  # Masked keys get zero weight: changing their values changes nothing.
  np.testing.assert_allclose(ours_v2[1], ours[1], atol=1e-5)
  np.testing.assert_allclose(ours16, theirs16, atol=2e-2)
  # Independent: row 1 attends only to its first three keys.
  qn, kn, vn = (np.asarray(x, np.float64)[1] for x in (q, k, v))
  s = np.einsum('tnh,snh->nts', qn, kn)[:, :, :3] / 2.0
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(ours[1], np.einsum('nts,snh->tnh', p, vn[:3]), atol=1e-5)


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
  results = {}
  for remat in ('none', 'full', 'dots'):
    model = _model(scan_layers=True, remat=remat)
    def loss(p, model=model):
      d = model.apply({'params': p}, ids, seg, mask, deterministic=False,
                      rngs={'dropout': jax.random.key(5)},
                      method=M.ElectraPretrainingModel.discriminator_logits)
      return jnp.mean(jnp.tanh(d) * mask)
    results[remat] = _jit(jax.value_and_grad(loss))(sp)
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
