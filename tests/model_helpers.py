"""Shared helpers for the tests/test_model_*.py files: tiny ELECTRA configs, random
params and batches, a fast-compiling jit, and a float64 NumPy reference of the model.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from electra_jax import model as M

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


def _stacked(params):
  """Unrolled (layer_i) params -> the scan layout."""
  sp = dict(params)
  for tower in ('generator', 'discriminator'):
    sp[tower] = dict(params[tower], encoder=M.stack_layer_params(params[tower]['encoder']))
  return sp
