"""The optimizer and schedule against a hand computation of the original update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from electra_jax import optim
from electra_jax.config import pretrain_config


def test_schedule_matches_hand_computation():
  sched = optim.learning_rate_schedule(1e-3, total_steps=1000, warmup_steps=100)
  for step, expected in [(0, 0.0), (50, 1e-3 * (1 - 0.05) * 0.5), (100, 1e-3 * 0.9),
                         (400, 1e-3 * 0.6), (1000, 0.0), (2000, 0.0)]:
    assert float(sched(step)) == pytest.approx(expected, rel=1e-6, abs=1e-12)
  # Polynomial decay with an end value and no warmup.
  sched = optim.learning_rate_schedule(1.0, 10, 0, end_learning_rate=0.1, decay_power=2.0)
  assert float(sched(5)) == pytest.approx(0.9 * 0.25 + 0.1)


def test_weight_decay_mask_excludes_layernorm_and_biases():
  params = {"layer": {"dense": {"kernel": 1, "bias": 2}, "LayerNorm": {"scale": 3, "bias": 4}},
            "embeddings": {"word_embeddings": {"embedding": 5}},
            "output_bias": 6}
  mask = optim.weight_decay_mask(params)
  assert mask == {"layer": {"dense": {"kernel": True, "bias": False},
                            "LayerNorm": {"scale": False, "bias": False}},
                  "embeddings": {"word_embeddings": {"embedding": True}},
                  "output_bias": False}


def _reference_updates(params, grads_seq, lr_at, *, b1, b2, eps, wd, clip, decay_mask):
  """The original AdamWeightDecayOptimizer in numpy, with global-norm clipping."""
  p = {k: np.array(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for step, g in enumerate(grads_seq):
    norm = np.sqrt(sum(np.sum(np.square(x)) for x in g.values()))
    scale = min(1.0, clip / norm)
    for k in p:
      gk = g[k] * scale
      m[k] = b1 * m[k] + (1 - b1) * gk
      v[k] = b2 * v[k] + (1 - b2) * gk * gk
      update = m[k] / (np.sqrt(v[k]) + eps)
      if decay_mask[k]:
        update = update + wd * p[k]
      p[k] = p[k] - lr_at(step) * update
  return p


def test_optimizer_matches_original_update_rule():
  cfg = pretrain_config("tiny").optim
  cfg.learning_rate, cfg.warmup_steps, cfg.weight_decay = 0.1, 2, 0.3
  tx, sched = optim.make_optimizer(cfg, total_steps=10)
  rng = np.random.default_rng(0)
  params = {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
            "bias": rng.normal(size=(4,)).astype(np.float32)}
  grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32) * 2 for k, v in params.items()}
               for _ in range(4)]
  state = tx.init(params)
  p = jax.tree.map(jnp.asarray, params)
  for g in grads_seq:
    updates, state = tx.update(g, state, p)
    p = jax.tree.map(lambda a, b: a + b, p, updates)
  expected = _reference_updates(params, grads_seq, lambda s: float(sched(s)),
                                b1=0.9, b2=0.999, eps=1e-6, wd=0.3, clip=1.0,
                                decay_mask={"kernel": True, "bias": False})
  for k in params:
    np.testing.assert_allclose(np.asarray(p[k]), expected[k], rtol=1e-5, atol=1e-6)
  # The first step has lr 0 (warmup starts at 0), so bias correction would be
  # visible from step 2: check the moments are uncorrected by construction.
  assert float(sched(0)) == 0.0


def _chain_it_replaced(schedule, clip_norm, weight_decay, factors):
  """The optax chain electra_adamw replaced, as far as its state goes."""

  def adam_state(params):
    zeros = lambda p: jnp.zeros_like(p, dtype=jnp.float32)
    return optim.ScaleByAdamNoBiasCorrectionState(mu=jax.tree.map(zeros, params),
                                                  nu=jax.tree.map(zeros, params))

  parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm > 0 else []
  parts.append(optax.GradientTransformation(adam_state, None))
  if weight_decay > 0:
    parts.append(optax.add_decayed_weights(weight_decay, mask=optim.weight_decay_mask))
  if factors is not None:
    parts.append(optax.GradientTransformation(lambda p: optax.EmptyState(), None))
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts)


@pytest.mark.parametrize("clip_norm,weight_decay,with_factors",
                         [(1.0, 0.01, False), (0.0, 0.0, False), (1.0, 0.01, True)])
def test_state_keeps_the_layout_of_the_chain_it_replaced(clip_norm, weight_decay,
                                                          with_factors):
  """Checkpoints written with the optax chain (before electra_adamw) stay restorable:
  same tree, same key paths, and the moments and step count where they were."""
  params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))}}
  factors = jax.tree.map(lambda p: np.float32(0.5), params) if with_factors else None
  sched = lambda count: 0.1
  tx = optim.electra_adamw(sched, clip_norm=clip_norm, weight_decay=weight_decay,
                           factors=factors)
  ours = tx.init(params)
  theirs = _chain_it_replaced(sched, clip_norm, weight_decay, factors).init(params)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  paths = lambda tree: [jax.tree_util.keystr(k) for k, _ in
                        jax.tree_util.tree_flatten_with_path(tree)[0]]
  assert paths(ours) == paths(theirs)
  grads = jax.tree.map(jnp.ones_like, params)
  _, state = tx.update(grads, ours, params)
  _, state = tx.update(grads, state, params)
  assert int(state[-1].count) == 2
  moments = state[1 if clip_norm > 0 else 0]
  # Two unit gradients: m = 0.1 + 0.9 * 0.1 (clipped: scaled by 1 / sqrt(16)).
  g = 1.0 / 4.0 if clip_norm > 0 else 1.0
  np.testing.assert_allclose(moments.mu["dense"]["kernel"], 0.19 * g, rtol=1e-6)
  np.testing.assert_allclose(moments.nu["dense"]["bias"], (0.001 + 0.999e-3) * g * g,
                             rtol=1e-5)
