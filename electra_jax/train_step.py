"""The jitted pretraining steps and what builds them.

`build_training` makes the model, the optimizer and the steps of a pretraining
config: `jax.jit` over a ('data', 'fsdp') device Mesh (electra_jax/parallel.py),
the batch split over every device, params and optimizer state sharded over 'fsdp'
(replicated when fsdp=1), the state buffers donated, and
`config.train.grad_accum_steps` micro-batches scanned inside the step
(`accumulate_gradients`).  On a CPU mesh of several devices with fsdp=1 the batch is
split by shard_map instead (`shard_map_gradients`).  `validate_config` checks a config
before any of it runs.
"""

import dataclasses
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import ml_collections
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from electra_jax import counter_rng
from electra_jax import host_memory
from electra_jax import objective
from electra_jax import optim
from electra_jax import parallel
from electra_jax import vocab_head
from electra_jax.errors import UserInputError
from electra_jax.model import (EMBEDDING_SHARING, OBJECTIVES, ElectraPretrainingModel,
                               encoder_config_from, generator_config, objective_heads)
from electra_jax.model_config import for_platform


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def validate_config(config: ml_collections.ConfigDict):
  """Checks values the type system cannot; raises UserInputError with the fix."""
  t = config.train
  if config.objective not in OBJECTIVES:
    raise UserInputError(f"config.objective={config.objective!r} is not one of "
                         f"{', '.join(OBJECTIVES)}")
  sharing = config.model.embedding_sharing
  if sharing not in EMBEDDING_SHARING:
    raise UserInputError(f"config.model.embedding_sharing={sharing!r} is not one of "
                         f"{', '.join(EMBEDDING_SHARING)}")
  if not objective_heads(config.objective).generator and sharing != "tied":
    raise UserInputError(
        f"config.objective={config.objective!r} has no generator, so "
        f"config.model.embedding_sharing must be 'tied' (got {sharing!r})")
  p = config.pretrain
  mlm_mask = p.get("mlm_mask_token_prob", 0.8)
  mlm_random = p.get("mlm_random_token_prob", 0.1)
  if not (0 <= mlm_mask and 0 <= mlm_random and mlm_mask + mlm_random <= 1):
    raise UserInputError(
        f"config.pretrain.mlm_mask_token_prob={mlm_mask} and mlm_random_token_prob="
        f"{mlm_random} must be >= 0 with a sum <= 1")
  for name in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every",
               "eval_batches", "keep_checkpoints"):
    if t[name] <= 0:
      raise UserInputError(f"config.train.{name} must be positive, got {t[name]}")
  if t.grad_accum_steps <= 0 or t.batch_size % t.grad_accum_steps:
    raise UserInputError(
        f"config.train.grad_accum_steps={t.grad_accum_steps} must be positive and divide "
        f"config.train.batch_size={t.batch_size}")
  n = jax.device_count()
  if (t.batch_size // t.grad_accum_steps) % n:
    raise UserInputError(
        f"config.train.batch_size={t.batch_size} / grad_accum_steps={t.grad_accum_steps} "
        f"= {t.batch_size // t.grad_accum_steps} sequences per micro-batch is not divisible "
        f"by the {n} devices; use a batch size that is a multiple of {n * t.grad_accum_steps}")
  parallel.mesh_shape(config.mesh.data, config.mesh.fsdp, n)  # raises if it does not fit
  if t.batch_size % n:
    raise UserInputError(
        f"config.train.batch_size={t.batch_size} (global) is not divisible by the {n} devices; "
        f"use a multiple of {n}, e.g. --config.train.batch_size={max(n, t.batch_size // n * n)}")
  if config.data.max_seq_length > config.model.max_position_embeddings:
    raise UserInputError(
        f"config.data.max_seq_length={config.data.max_seq_length} exceeds "
        f"config.model.max_position_embeddings={config.model.max_position_embeddings}")
  if not 0 < config.pretrain.mask_prob < 1:
    raise UserInputError(f"config.pretrain.mask_prob must be in (0, 1), got "
                         f"{config.pretrain.mask_prob}")


def accumulate_gradients(grad_fn, params, batch, key, num_micro: int):
  """(grads, sums) of `grad_fn(params, batch, key)` over `num_micro` micro-batches.

  Micro-batch i takes rows i, i + k, i + 2k, ... of the batch (k = num_micro), so every
  device holds a slice of every micro-batch.  Each is traced inside
  `counter_rng.example_rows`, with the same key: the masks, sampling noise and dropout
  it draws are those its rows get in one step on the whole batch.  Gradients are
  averaged and metric sums added, so for a loss that is a mean over rows (ELECTRA's,
  when every row has as many real tokens) this equals `grad_fn` on the whole batch.
  Runs as a lax.scan inside the jitted step, so only one micro-batch's activations are
  alive at a time.
  """
  if num_micro == 1:
    return grad_fn(params, batch, key)
  rows = jax.tree.leaves(batch)[0].shape[0] // num_micro

  def split(x):  # [B, ...] -> [k, B // k, ...], row r of micro-batch i = row r*k + i
    x = x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  micro = jax.tree.map(split, batch)

  def micro_grads(mb, i):
    with counter_rng.example_rows(rows, num_micro, i):
      return grad_fn(params, mb, key)

  def body(carry, xs):
    i, mb = xs
    return jax.tree.map(jnp.add, carry, micro_grads(mb, i)), None

  first = jax.tree.map(lambda x: x[0], micro)
  shapes = jax.eval_shape(micro_grads, first, 0)
  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
  (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(num_micro), micro))
  return jax.tree.map(lambda g: g / num_micro, grads), sums


def shard_map_gradients(grad_fn, params, batch, key, num_micro: int, mesh: Mesh,
                        axis: str = "data"):
  """`accumulate_gradients` with the batch split over the mesh's `axis` by shard_map.

  Each device computes the gradient of its rows' share of the loss (their sums over
  the whole batch's weights, `objective.batch_split_over`), drawing the random numbers
  its rows get in one step on the whole batch (`counter_rng.example_rows`); one psum
  at the end adds gradients and metric sums.  So the result equals the single-device
  step's, accumulation included (micro-batch i is the same rows either way).  On CPU
  this beats the partitioner's version, which all-reduces every layer's gradients
  inside the layer loop: ELECTRA-Small's step on 2 cores as 2 devices is 7-19% faster
  than as one device in same-process A/B runs (benchmarks/train_step.md).
  """
  n = mesh.shape[axis]
  rows = jax.tree.leaves(batch)[0].shape[0] // n

  def body(params, batch, key):
    first = jax.lax.axis_index(axis) * rows
    with counter_rng.example_rows(rows, 1, first, total=rows * n), \
        objective.batch_split_over(axis):
      grads, sums = accumulate_gradients(grad_fn, params, batch, key, num_micro)
    # One psum of one flat buffer, not one per leaf: XLA groups per-leaf all-reduces and
    # ran a group of early-ready leaves (a head's bias gradient, a metric count) in the
    # middle of the step, a second meeting point where the device ahead (the devices
    # share the host's cores and drift apart) waits for the other.  3-4% faster on 2
    # CPU devices in same-process A/B runs (benchmarks/train_step.md).
    flat, unravel = ravel_pytree((grads, sums))
    grads, sums = unravel(jax.lax.psum(flat, axis))
    sums["batches"] = sums["batches"] / n  # one batch, not one per device
    return grads, sums

  return jax.shard_map(body, mesh=mesh, in_specs=(P(), P(axis), P()),
                       out_specs=(P(), P()), check_vma=False)(params, batch, key)


@dataclasses.dataclass(frozen=True)
class Training:
  """The model, optimizer and jitted steps of a pretraining config on a Mesh."""
  model: ElectraPretrainingModel
  settings: objective.ObjectiveSettings
  tx: optax.GradientTransformation
  schedule: Callable[[Any], Any]
  init_state: Callable[[jax.Array], TrainState]  # jitted, sharded per state_sharding
  abstract_state: TrainState  # ShapeDtypeStructs
  state_sharding: TrainState  # NamedShardings (parallel.state_shardings)
  batch_sharding: Any
  train_step: Callable[[TrainState, dict], tuple[TrainState, dict]]  # jitted, donates state
  eval_step: Callable[[Any, dict, Any], dict]  # jitted (params, batch, index) -> sums
  init_key: jax.Array

  def abstract_batch(self, batch_size: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
    shape = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32, sharding=self.batch_sharding)
    return {k: shape for k in ("input_ids", "input_mask", "segment_ids")}

  def compile_train_step(self, state, batch_size: int, seq_len: int):
    """(the train step compiled ahead of time for `state` and this batch shape, seconds).

    Afterwards the host memory the compiler freed is handed back to the OS: glibc
    keeps it otherwise, ~300 MB of resident memory for ELECTRA-Small for the whole run.
    """
    t0 = time.perf_counter()
    compiled = self.train_step.lower(state, self.abstract_batch(batch_size, seq_len)).compile()
    seconds = time.perf_counter() - t0
    host_memory.release_freed()
    return compiled, seconds


def build_training(config: ml_collections.ConfigDict, tokenizer, mesh: Mesh) -> Training:
  """Everything the loop (and `electra_jax.aot`) needs to run or compile the steps.

  `tokenizer` only needs vocab_size and the pad/cls/sep/mask ids.  Nothing is
  allocated: the state exists abstractly until `init_state` or a restore.
  """
  t = config.train
  seq_len = config.data.max_seq_length
  platform = mesh.devices.flat[0].platform
  disc_cfg = for_platform(encoder_config_from(config.model, tokenizer.vocab_size), platform)
  has_generator = objective_heads(config.objective).generator
  # objective 'mlm' has no generator: generator_size is ignored.
  gen_cfg = generator_config(disc_cfg, config.model.generator_size) if has_generator else None
  model = ElectraPretrainingModel(disc=disc_cfg, gen=gen_cfg,
                                  embedding_sharing=config.model.embedding_sharing,
                                  objective=config.objective)
  settings = dataclasses.replace(
      objective.ObjectiveSettings.from_config(config.pretrain, tokenizer, seq_len),
      vocab_chunk=vocab_head.chunk_for_platform(platform))
  tx, schedule = optim.make_optimizer(config.optim, t.steps)

  def init_state(key):
    ids = jnp.zeros((1, seq_len), jnp.int32)
    positions = jnp.zeros((1, settings.max_predictions), jnp.int32)
    params = model.init({"params": key}, ids, ids, ids + 1, positions)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  init_key, train_key, eval_key = jax.random.split(jax.random.key(config.seed), 3)
  abstract_state = jax.eval_shape(init_state, init_key)
  state_sharding = parallel.state_shardings(abstract_state, mesh)
  batch_sharding = parallel.batch_sharding(mesh)
  replicated = parallel.replicated(mesh)

  split_by_shard_map = parallel.splits_batch_by_shard_map(mesh)

  def loss_fn(params, batch, key, deterministic):
    return objective.pretraining_loss(params, batch, key, model=model, s=settings,
                                      deterministic=deterministic)

  def grad_fn(params, batch, key):
    (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key, False)
    return grads, sums

  def train_step(state: TrainState, batch):
    key = jax.random.fold_in(train_key, state.step)
    if split_by_shard_map:
      grads, sums = shard_map_gradients(grad_fn, state.params, batch, key,
                                        t.grad_accum_steps, mesh)
    else:
      grads, sums = accumulate_gradients(grad_fn, state.params, batch, key,
                                         t.grad_accum_steps)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    sums["grad_norm"] = optax.tree.norm(grads)
    sums["learning_rate"] = schedule(state.step)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), sums

  def eval_step(params, batch, index):
    _, sums = loss_fn(params, batch, jax.random.fold_in(eval_key, index), True)
    return sums

  return Training(
      model=model, settings=settings, tx=tx, schedule=schedule,
      init_state=jax.jit(init_state, out_shardings=state_sharding),
      abstract_state=abstract_state, state_sharding=state_sharding,
      batch_sharding=batch_sharding,
      train_step=jax.jit(train_step, in_shardings=(state_sharding, batch_sharding),
                         out_shardings=(state_sharding, replicated), donate_argnums=(0,)),
      eval_step=jax.jit(eval_step, in_shardings=(state_sharding.params, batch_sharding, None),
                        out_shardings=replicated),
      init_key=init_key)
