"""The ELECTRA optimizer: AdamW without bias correction, clipped, warmup x linear decay.

Matches the original `AdamWeightDecayOptimizer`: m and v are plain exponential
moving averages (no bias correction), the update is m / (sqrt(v) + eps) plus
weight_decay * param (not on LayerNorm parameters or biases), and the whole
update is scaled by the learning rate.  Gradients are clipped to a global norm
first.  The schedule multiplies a polynomial decay over all steps by a linear
warmup factor, so warmup and decay run at the same time.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(learning_rate: float, total_steps: int, warmup_steps: int,
                           end_learning_rate: float = 0.0,
                           decay_power: float = 1.0) -> optax.Schedule:
  """lr(step) = decay(step) * min(1, step / warmup_steps).

  decay(step) = (lr - end_lr) * (1 - min(step, total) / total) ** power + end_lr.
  """

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    frac = jnp.minimum(step, total_steps) / max(total_steps, 1)
    decayed = (learning_rate - end_learning_rate) * (1.0 - frac) ** decay_power
    decayed = decayed + end_learning_rate
    if warmup_steps > 0:
      decayed = decayed * jnp.minimum(1.0, step / warmup_steps)
    return decayed

  return schedule


class ScaleByAdamNoBiasCorrectionState(NamedTuple):
  mu: Any
  nu: Any


def scale_by_adam_without_bias_correction(b1: float = 0.9, b2: float = 0.999,
                                          eps: float = 1e-6
                                          ) -> optax.GradientTransformation:
  """Adam's update direction m / (sqrt(v) + eps) with uncorrected moments."""

  def init_fn(params):
    zeros = lambda p: jnp.zeros_like(p, dtype=jnp.float32)
    return ScaleByAdamNoBiasCorrectionState(
        mu=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params))

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
    updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
    return updates, ScaleByAdamNoBiasCorrectionState(mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


_NO_DECAY = ("layernorm", "layer_norm", "bias")


def weight_decay_mask(params):
  """True for parameters that get weight decay: all but LayerNorm params and biases.

  A parameter is excluded when any key on its path contains 'LayerNorm',
  'layer_norm' or 'bias' (case-insensitive), as in the original code.
  """

  def decays(path, _):
    names = [str(getattr(k, "key", getattr(k, "name", k))).lower() for k in path]
    return not any(bad in name for name in names for bad in _NO_DECAY)

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(optim_cfg, total_steps: int) -> tuple[optax.GradientTransformation,
                                                          optax.Schedule]:
  """Builds (optimizer, schedule) from the `config.optim` section."""
  schedule = learning_rate_schedule(
      optim_cfg.learning_rate, total_steps, optim_cfg.warmup_steps,
      optim_cfg.end_learning_rate, optim_cfg.decay_power)
  parts = []
  if optim_cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.clip_norm))
  parts.append(scale_by_adam_without_bias_correction(optim_cfg.b1, optim_cfg.b2,
                                                     optim_cfg.eps))
  if optim_cfg.weight_decay > 0:
    parts.append(optax.add_decayed_weights(optim_cfg.weight_decay, mask=weight_decay_mask))
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts), schedule
