"""The ELECTRA optimizer: AdamW without bias correction, clipped, warmup x linear decay.

Matches the original `AdamWeightDecayOptimizer`: m and v are plain exponential
moving averages (no bias correction), the update is m / (sqrt(v) + eps) plus
weight_decay * param (not on LayerNorm parameters or biases), and the whole
update is scaled by the learning rate.  Gradients are clipped to a global norm
first.  The schedule multiplies a polynomial decay over all steps by a linear
warmup factor, so warmup and decay run at the same time.  `electra_adamw` does all of
it in one elementwise pass per parameter.

For fine-tuning, `layerwise_lr_factors` (passed to `electra_adamw` as `factors`) give
lower learning rates to layers closer to the input (layer-wise lr decay, DESIGN.md §3).
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
  """Adam's two moments (the name and fields of the chain element it replaced)."""
  mu: Any
  nu: Any


def electra_adamw(schedule: optax.Schedule, *, b1: float = 0.9, b2: float = 0.999,
                  eps: float = 1e-6, weight_decay: float = 0.01, clip_norm: float = 1.0,
                  factors=None) -> optax.GradientTransformation:
  """The original update, one elementwise pass per parameter.

  For each parameter p with gradient g (all float32):
    g <- g * min(1, clip_norm / global_norm(grads))        (if clip_norm > 0)
    m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2      (no bias correction)
    u  = m / (sqrt(v) + eps) + weight_decay * p            (decay per `weight_decay_mask`)
    update = -schedule(count) * factor * u                 (`factors`: layer-wise lr, or 1)

  This is optax.chain(clip_by_global_norm, Adam without bias correction,
  add_decayed_weights, [the factors,] scale_by_learning_rate) written as one function
  of (g, m, v, p) per parameter: XLA:CPU ran the chain as four passes per parameter (the
  clipped gradient and the new moments written out and read back), 33-38 ms per
  ELECTRA-Small update on one core; this form takes 13 ms (benchmarks/train_step.md).
  `factors` is a pytree like the params of broadcastable multipliers
  (`layerwise_lr_factors`).

  The state is laid out as that chain's was (a tuple of the elements' states: the
  moments at [.., ScaleByAdamNoBiasCorrectionState(mu, nu), ..], the step count in the
  last, optax.ScaleByScheduleState), so checkpoints written before stay readable.
  """

  def init_fn(params):
    zeros = lambda p: jnp.zeros_like(p, dtype=jnp.float32)
    moments = ScaleByAdamNoBiasCorrectionState(mu=jax.tree.map(zeros, params),
                                               nu=jax.tree.map(zeros, params))
    return ((optax.EmptyState(),) * (clip_norm > 0) + (moments,)
            + (optax.MaskedState(inner_state=optax.EmptyState()),) * (weight_decay > 0)
            + (optax.EmptyState(),) * (factors is not None)
            + (optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32)),))

  def update_fn(grads, state, params=None):
    if params is None:
      raise ValueError("electra_adamw needs the params (weight decay): pass them to update")
    moments_at = 1 if clip_norm > 0 else 0
    moments, count = state[moments_at], state[-1].count
    lr = schedule(count)
    scale = None
    if clip_norm > 0:
      norm = optax.tree.norm(grads)
      scale = jnp.where(norm < clip_norm, jnp.float32(1.0), clip_norm / norm)
    treedef = jax.tree.structure(params)
    flat = treedef.flatten_up_to
    decays = flat(weight_decay_mask(params))
    leaf_factors = flat(factors) if factors is not None else [None] * treedef.num_leaves

    def leaf(g, m, v, p, decay, factor):
      g = g.astype(jnp.float32)
      if scale is not None:
        g = g * scale
      m = b1 * m + (1 - b1) * g
      v = b2 * v + (1 - b2) * jnp.square(g)
      u = m / (jnp.sqrt(v) + eps)
      if decay and weight_decay > 0:
        u = u + weight_decay * p
      if factor is not None:
        u = u * jnp.asarray(factor, u.dtype)
      return (-lr * u).astype(p.dtype), m, v

    out = [leaf(*args) for args in zip(flat(grads), flat(moments.mu), flat(moments.nu),
                                        flat(params), decays, leaf_factors)]
    updates, mu, nu = (jax.tree.unflatten(treedef, [o[i] for o in out]) for i in range(3))
    state = list(state)
    state[moments_at] = ScaleByAdamNoBiasCorrectionState(mu=mu, nu=nu)
    state[-1] = optax.ScaleByScheduleState(count=optax.safe_increment(count))
    return updates, tuple(state)

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
  tx = electra_adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                     weight_decay=optim_cfg.weight_decay, clip_norm=optim_cfg.clip_norm)
  return tx, schedule


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
