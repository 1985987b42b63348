"""The ELECTRA optimizer: AdamW without bias correction, clipped, warmup x linear decay.

Matches the original `AdamWeightDecayOptimizer`: m and v are plain exponential
moving averages (no bias correction), the update is m / (sqrt(v) + eps) plus
weight_decay * param (not on LayerNorm parameters or biases), and the whole
update is scaled by the learning rate.  Gradients are clipped to a global norm
first.  The schedule multiplies a polynomial decay over all steps by a linear
warmup factor, so warmup and decay run at the same time.

For fine-tuning, `layerwise_lr_factors` + `scale_by_factors` give lower learning
rates to layers closer to the input (layer-wise lr decay, DESIGN.md §3).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
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


# ----------------------------------------------------------------------------- layer-wise lr

_EMBEDDING_KEYS = ("embeddings", "generator_embeddings", "embeddings_project")


def _path_names(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def _layer_depth(names: list[str], num_layers: int) -> int | str:
  """Depth of a parameter: 0 embeddings, i+1 for layer i, 'scanned', or num_layers+1 (head)."""
  for parent, name in zip(names, names[1:]):
    if parent != "encoder":
      continue
    if name == "layer":
      return "scanned"
    if name.startswith("layer_") and name[len("layer_"):].isdigit():
      i = int(name[len("layer_"):])
      if i >= num_layers:
        raise ValueError(f"parameter {'/'.join(names)} is layer {i} but num_layers is "
                         f"{num_layers}")
      return i + 1
  if any(n in _EMBEDDING_KEYS for n in names):
    return 0
  return num_layers + 1


def layerwise_lr_factors(params, num_layers: int, decay: float, compat: bool = False):
  """Per-parameter learning-rate multipliers for layer-wise lr decay (DESIGN.md §3).

  Depths: the embedding block (any path through 'embeddings', 'generator_embeddings'
  or 'embeddings_project') is depth 0, encoder layer i (0-based; `encoder/layer_i`, or
  row i of the scanned `encoder/layer` stack) is depth i + 1, and every other
  parameter (the task head) is depth L + 1, where L = `num_layers`.

  Intended rule (compat=False): factor = decay ** (L + 1 - depth), i.e. embeddings
  decay^(L+1), layer i decay^(L-i) (the top layer decay^1), head 1.

  compat=True reproduces the original ELECTRA code (`_get_layer_lrs` in
  model/optimization.py), which gives the head depth L + 2 and computes
  decay ** (L + 2 - depth): embeddings decay^(L+2), layer i decay^(L+1-i) (the top
  layer decay^2), head decay^0 = 1.  That is the intended factor times one extra
  `decay` for every non-head parameter.

  `decay` of 0 or 1 (or below 0) turns the decay off: every factor is 1.

  Returns:
    A pytree like `params` of float32 numpy arrays: a scalar for an unscanned
    parameter, shape [L, 1, ..., 1] (broadcasts along the leading layer axis) for a
    parameter under a scanned `encoder/layer`.
  """
  off = decay <= 0 or decay == 1

  def factor(depth: int) -> float:
    if off:
      return 1.0
    if depth == num_layers + 1:
      return 1.0
    exponent = num_layers + 1 - depth + (1 if compat else 0)
    return float(decay) ** exponent

  def leaf(path, x):
    names = _path_names(path)
    depth = _layer_depth(names, num_layers)
    if depth == "scanned":
      shape = getattr(x, "shape", ())
      if not shape or shape[0] != num_layers:
        raise ValueError(f"scanned parameter {'/'.join(names)} has shape {shape}; expected "
                         f"a leading layer axis of {num_layers}")
      col = np.array([factor(i + 1) for i in range(num_layers)], np.float32)
      return col.reshape((num_layers,) + (1,) * (len(shape) - 1))
    return np.asarray(factor(depth), np.float32)

  return jax.tree_util.tree_map_with_path(leaf, params)


def layerwise_lr_table(params, num_layers: int, decay: float,
                       compat: bool = False) -> dict[str, float]:
  """{'a/b/kernel': factor} for every parameter; scanned ones as 'a/layer/b/kernel[i]'.

  A readable view of `layerwise_lr_factors` (for logs and tests).
  """
  factors = layerwise_lr_factors(params, num_layers, decay, compat)
  table = {}
  for path, f in jax.tree_util.tree_flatten_with_path(factors)[0]:
    name = "/".join(_path_names(path))
    if f.ndim:
      for i, v in enumerate(f.reshape(-1)):
        table[f"{name}[{i}]"] = float(v)
    else:
      table[name] = float(f)
  return table


def scale_by_factors(factors) -> optax.GradientTransformation:
  """Multiplies each update by its (broadcastable) factor; stateless.

  With `layerwise_lr_factors` placed just before `optax.scale_by_learning_rate`, each
  parameter's effective learning rate is schedule(step) * factor, as in the original
  code, where the whole update (weight decay included) is scaled by the layer's lr.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    updates = jax.tree.map(lambda u, f: u * jnp.asarray(f, u.dtype), updates, factors)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)
