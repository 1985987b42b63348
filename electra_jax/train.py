"""ELECTRA pretraining.

    python -m electra_jax.train --config=configs/small.py --workdir=DIR \
        [--config.data.text='corpus/*.txt'] [--config.train.steps=...]

`train_and_evaluate(config, workdir)` is the whole job, importable for tests.
It reads top to bottom: setup, data, model and optimizer, checkpoints, the
jitted steps, then the training loop.  `build_training` makes the model, the
optimizer and the steps: `jax.jit` over a ('data', 'fsdp') device Mesh
(electra_jax/parallel.py), the batch split over every device, params and optimizer
state sharded over 'fsdp' (replicated when fsdp=1), the state buffers donated, and
`config.train.grad_accum_steps` micro-batches scanned inside the step.
"""

import dataclasses
import json
import math
import os
import shutil
import signal
import threading
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.sharding import Mesh

from electra_jax import flops
from electra_jax import host_memory
from electra_jax import objective
from electra_jax import optim
from electra_jax import parallel
from electra_jax import workdir as workdir_io
from electra_jax.errors import UserInputError
from electra_jax.model import (EMBEDDING_SHARING, OBJECTIVES, ElectraPretrainingModel,
                               count_params, discriminator_param_count, encoder_config_from,
                               generator_config, objective_heads)
from electra_jax.reporting import MetricWriter
from electra_jax.tokenization import Tokenizer, load_tokenizer


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


# Config sections that must not change when resuming from a workdir's checkpoint.
_FROZEN_ON_RESUME = ("objective", "model", "pretrain.mask_prob", "data.max_seq_length")
# Keys of those sections that may change on resume: how the same math is computed
# (e.g. turn on remat or bf16 after an out-of-memory error), not what is computed.
_FREE_ON_RESUME = ("model.remat", "model.dtype")


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


def _get(config, dotted):
  for part in dotted.split("."):
    config = config[part]
  return config


def check_workdir_config(workdir: str, config, vocab_fingerprint: str):
  """Writes config.json on a fresh workdir; on resume refuses a different model/data setup."""
  path = epath.Path(workdir) / "config.json"
  current = json.loads(config.to_json_best_effort())
  current["vocab_fingerprint"] = vocab_fingerprint
  if path.exists():
    saved = json.loads(path.read_text(encoding="utf-8"))
    for key in _FROZEN_ON_RESUME + ("vocab_fingerprint",):
      old, new = _frozen_part(saved, key), _frozen_part(current, key)
      if old != new:
        raise UserInputError(
            f"workdir {workdir} holds a run with {key}={json.dumps(old)} but the config now has "
            f"{json.dumps(new)}; resume with the original settings or use a new --workdir")
  if jax.process_index() == 0:
    workdir_io.write_text_atomic(path, json.dumps(current, indent=2, sort_keys=True))


def read_workdir_config(workdir: str) -> tuple[dict, Tokenizer]:
  """(saved config.json as a dict, tokenizer of WORKDIR/vocab/) of a pretraining workdir.

  Checks what every reader of a finished run relies on: config.json parses and has a
  'model' section, checkpoints/ exists, and the vocab matches the recorded fingerprint.
  """
  path = workdir_io.resolve(workdir)
  config_path = epath.Path(path) / "config.json"
  if not (config_path.is_file() and epath.Path(workdir_io.checkpoint_dir(path)).is_dir()):
    raise UserInputError(f"{path} is not a pretraining workdir (expected config.json and "
                         f"checkpoints/ from electra_jax.train)")
  try:
    saved = json.loads(config_path.read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise UserInputError(f"cannot read {config_path} ({e}); is it a pretraining workdir?") from e
  if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
    raise UserInputError(f"{config_path} has no 'model' section; is it a pretraining workdir?")
  vocab_dir = epath.Path(path) / "vocab"
  files = sorted(f.name for f in vocab_dir.iterdir()
                 if not f.name.endswith(workdir_io.TMP_SUFFIX)) if vocab_dir.is_dir() else []
  if not files:
    raise UserInputError(f"pretraining workdir {path} has no vocab/ file; it was not "
                         f"written by electra_jax.train, or is incomplete")
  tokenizer = load_tokenizer(os.fspath(vocab_dir / files[0]))  # reads through epath
  want = saved.get("vocab_fingerprint")
  if want and tokenizer.fingerprint != want:
    raise UserInputError(
        f"vocab mismatch in {path}: vocab/{files[0]} has fingerprint "
        f"{tokenizer.fingerprint} but config.json records {want}; restore the original "
        f"vocab file")
  return saved, tokenizer


def check_workdir_writable(workdir: str):
  """Fails before training when the workdir cannot be created or written."""
  if jax.process_index() != 0:
    return
  probe = epath.Path(workdir) / f".write-test-{os.getpid()}"
  try:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    probe.write_text("ok", encoding="utf-8")
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except
    # Not only OSError: object-store clients raise their own types (HTTP 403, no bucket).
    raise UserInputError(f"workdir {workdir} is not writable ({_one_line(e)}); pass a "
                         f"writable --workdir") from e


def _one_line(e: Exception) -> str:
  """An exception as one short line (object-store errors often span several)."""
  text = getattr(e, "strerror", None) or str(e).strip() or type(e).__name__
  return text.splitlines()[0][:200]


def check_workdir_space(workdir: str, abstract_state, keep: int):
  """Fails before training when the disk cannot hold the checkpoints to be kept."""
  if workdir_io.is_remote(workdir):
    return  # an object store (gs://) has no free-space figure to check against
  state_bytes = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                    for x in jax.tree.leaves(abstract_state))
  need = state_bytes * (keep + 1)  # kept checkpoints + the one being written
  free = shutil.disk_usage(workdir).free
  if free < need:
    raise UserInputError(
        f"workdir {workdir} has {free / 2**30:.2f} GiB free but {keep + 1} checkpoints of "
        f"this model need {need / 2**30:.2f} GiB; free space or lower "
        f"config.train.keep_checkpoints")


def save_vocab(workdir: str, vocab_path: str) -> str:
  """Copies the vocab into WORKDIR/vocab/ so the run is self-contained (fine-tune, export)."""
  dest = epath.Path(workdir) / "vocab" / epath.Path(vocab_path).name
  if jax.process_index() == 0 and not dest.exists():
    workdir_io.copy_atomic(vocab_path, dest)
  return os.fspath(dest)


def save_state(workdir: str, state: TrainState):
  """Writes `state` as WORKDIR/checkpoints/<step>/state, the layout train_and_evaluate
  resumes from (without a 'data' item: the input pipeline then starts at the beginning)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  manager = ocp.CheckpointManager(workdir_io.checkpoint_dir(workdir),
                                  item_handlers={"state": ocp.StandardCheckpointHandler()})
  manager.save(int(state.step), args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  manager.wait_until_finished()
  manager.close()


def restore_params(workdir: str, abstract_params) -> tuple[int, Any]:
  """(step, params as numpy) of WORKDIR's latest checkpoint, reading only the params.

  `abstract_params` is the expected params tree (ShapeDtypeStructs, e.g. from
  model.abstract_params); a sub-tree of the saved one is fine (partial restore).
  Raises UserInputError when there is no checkpoint or its tensors do not fit.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ckpt_dir = workdir_io.checkpoint_dir(workdir)
  listed = list(epath.Path(ckpt_dir).iterdir()) if epath.Path(ckpt_dir).is_dir() else []
  steps = [int(d.name) for d in listed if d.name.isdigit() and (d / "state").is_dir()]
  if not steps:
    raise UserInputError(f"no checkpoint in {ckpt_dir}; pretrain first (electra_jax.train "
                         f"writes checkpoints/<step>/)")
  step = max(steps)
  target = {"params": jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                   abstract_params)}
  try:
    restored = ocp.PyTreeCheckpointer().restore(
        os.fspath(epath.Path(ckpt_dir) / str(step) / "state"),
        args=ocp.args.PyTreeRestore(
            item=target, partial_restore=True,
            restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                      target)))
  except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
    raise UserInputError(
        f"checkpoint {step} in {ckpt_dir} does not match its config.json and vocab "
        f"({str(e).splitlines()[0][:200]})") from e
  params = restored["params"]
  for want, got in zip(jax.tree.leaves(target["params"]), jax.tree.leaves(params)):
    if tuple(want.shape) != tuple(np.shape(got)):
      raise UserInputError(
          f"checkpoint {step} in {ckpt_dir} holds a tensor of shape {np.shape(got)} where "
          f"its config.json and vocab give {want.shape}; the vocab does not match")
  return step, params


def _frozen_part(tree, dotted):
  """`tree`'s value at `dotted`, without the keys of _FREE_ON_RESUME below it."""
  value = _lookup(tree, dotted)
  if isinstance(value, dict):
    free = {k[len(dotted) + 1:] for k in _FREE_ON_RESUME if k.startswith(dotted + ".")}
    value = {k: v for k, v in value.items() if k not in free}
  return value


def _lookup(tree, dotted):
  for part in dotted.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return None
    tree = tree[part]
  return tree


def _device_batch(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def _host_sums(sums_list) -> dict[str, np.ndarray]:
  """Adds a list of per-step metric sums on the host (one transfer)."""
  fetched = jax.device_get(sums_list)
  total = fetched[0]
  for s in fetched[1:]:
    total = jax.tree.map(np.add, total, s)
  return total


def accumulate_gradients(grad_fn, params, batch, key, num_micro: int):
  """(grads, sums) of `grad_fn(params, batch, key)` over `num_micro` micro-batches.

  Micro-batch i takes rows i, i + k, i + 2k, ... of the batch (k = num_micro), so every
  device holds a slice of every micro-batch, and gets key fold_in(key, i).  Gradients
  are averaged and metric sums added; for a loss that is a mean over rows this equals
  `grad_fn` on the whole batch.  Runs as a lax.scan inside the jitted step, so only one
  micro-batch's activations are alive at a time.
  """
  if num_micro == 1:
    return grad_fn(params, batch, key)

  def split(x):  # [B, ...] -> [k, B // k, ...], row r of micro-batch i = row r*k + i
    x = x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  micro = jax.tree.map(split, batch)

  def body(carry, xs):
    i, mb = xs
    grads, sums = grad_fn(params, mb, jax.random.fold_in(key, i))
    return jax.tree.map(jnp.add, carry, (grads, sums)), None

  first = jax.tree.map(lambda x: x[0], micro)
  shapes = jax.eval_shape(grad_fn, params, first, key)
  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
  (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(num_micro), micro))
  return jax.tree.map(lambda g: g / num_micro, grads), sums


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
  disc_cfg = encoder_config_from(config.model, tokenizer.vocab_size)
  has_generator = objective_heads(config.objective).generator
  # objective 'mlm' has no generator: generator_size is ignored.
  gen_cfg = generator_config(disc_cfg, config.model.generator_size) if has_generator else None
  model = ElectraPretrainingModel(disc=disc_cfg, gen=gen_cfg,
                                  embedding_sharing=config.model.embedding_sharing,
                                  objective=config.objective)
  settings = objective.ObjectiveSettings.from_config(config.pretrain, tokenizer, seq_len)
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

  def loss_fn(params, batch, key, deterministic):
    return objective.pretraining_loss(params, batch, key, model=model, s=settings,
                                      deterministic=deterministic)

  def grad_fn(params, batch, key):
    (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key, False)
    return grads, sums

  def train_step(state: TrainState, batch):
    key = jax.random.fold_in(train_key, state.step)
    grads, sums = accumulate_gradients(grad_fn, state.params, batch, key, t.grad_accum_steps)
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Pretrains per `config` in `workdir` (resuming if it holds a checkpoint).

  Returns the final held-out metrics as {'eval/<name>': value}.
  """
  # Imported here so `--help` and config errors stay fast.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  import grain  # pylint: disable=g-import-not-at-top
  from electra_jax.data.dataset import check_compatible, open_dataset  # pylint: disable=g-import-not-at-top
  from electra_jax.data.pipeline import eval_batches, train_iterator  # pylint: disable=g-import-not-at-top
  from electra_jax.data.to_device import DevicePrefetchIterator  # pylint: disable=g-import-not-at-top
  from electra_jax.data.select import prepare_dataset  # pylint: disable=g-import-not-at-top

  # ------------------------------------------------------------------ setup
  parallel.initialize_distributed(config.distributed)  # before anything touches a device
  validate_config(config)
  workdir = workdir_io.resolve(workdir)  # gs://... stays as it is
  check_workdir_writable(workdir)
  t = config.train
  mesh = parallel.make_mesh(config.mesh)

  # ------------------------------------------------------------------- data
  dataset_dir = prepare_dataset(config.data, is_builder=jax.process_index() == 0)
  built = open_dataset(dataset_dir)
  check_compatible(built, vocab_fingerprint=None, max_seq_length=config.data.max_seq_length)
  tokenizer = load_tokenizer(built.vocab_path)
  if config.data.vocab and config.data.dataset_dir:
    wanted = load_tokenizer(config.data.vocab).fingerprint
    check_compatible(built, vocab_fingerprint=wanted, max_seq_length=config.data.max_seq_length)
  seq_len = config.data.max_seq_length
  eval_data = eval_batches(built.sources["validation"], global_batch_size=t.batch_size,
                           num_batches=t.eval_batches)

  # ------------------------------------------------- model, optimizer, steps
  training = build_training(config, tokenizer, mesh)
  abstract_state, state_sharding = training.abstract_state, training.state_sharding
  batch_sharding, eval_step = training.batch_sharding, training.eval_step
  # Host batches come from the pipeline; a thread puts them on the devices ahead.
  train_iter = DevicePrefetchIterator(
      train_iterator(built.sources["train"], global_batch_size=t.batch_size,
                     seed=config.data.seed, prefetch=config.data.prefetch),
      put=lambda host: _device_batch(host, batch_sharding))
  has_generator = objective_heads(config.objective).generator

  # ------------------------------------------------------------ checkpoints
  check_workdir_config(workdir, config, tokenizer.fingerprint)
  save_vocab(workdir, tokenizer.path)
  check_workdir_space(workdir, abstract_state, t.keep_checkpoints)

  ckpt_dir = epath.Path(workdir_io.checkpoint_dir(workdir))

  def open_manager():
    return ocp.CheckpointManager(
        os.fspath(ckpt_dir),
        options=ocp.CheckpointManagerOptions(max_to_keep=t.keep_checkpoints,
                                             enable_async_checkpointing=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

  def restore(manager, step):
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract_state, state_sharding)
    items = {"state": ocp.args.StandardRestore(target)}
    # A checkpoint written by `electra_jax.hf import` has no 'data' item: the data
    # iterator then starts at the beginning.
    if (ckpt_dir / str(step) / "data").is_dir():
      items["data"] = grain.checkpoint.CheckpointRestore(train_iter)
    return manager.restore(step, args=ocp.args.Composite(**items))["state"]

  # The newest readable checkpoint wins; unreadable ones (a truncated or corrupted
  # write) are reported by step, moved aside to checkpoints/corrupt-<step>, and the
  # next older one is tried.  Orbax writes each checkpoint under a temporary name and
  # renames it when complete, so a write killed midway is never listed at all.
  manager = open_manager()
  start_step, state, first_error = None, None, None
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state, start_step = restore(manager, step), step
      break
    except Exception as e:  # pylint: disable=broad-except
      first_error = first_error or (step, e)
      if jax.process_index() == 0:
        print(f"checkpoint {step} in {workdir}/checkpoints is unreadable "
              f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
              f"moved to checkpoints/corrupt-{step}, trying the previous one", flush=True)
        manager.close()
        (ckpt_dir / str(step)).rename(ckpt_dir / f"corrupt-{step}-{int(time.time())}")
        manager = open_manager()
  if first_error and start_step is None:
    step, e = first_error
    raise UserInputError(
        f"checkpoint {step} in {workdir}/checkpoints does not match this model config "
        f"({str(e).splitlines()[0][:200]}); use the original config or a new --workdir") from e
  if start_step is None:
    state = training.init_state(training.init_key)
  start_step = int(start_step or 0)

  flops_per_step = flops.train_flops_per_step(config, tokenizer.vocab_size)["total"]
  writer = MetricWriter(workdir, t.steps, t.progress_bar, initial_step=start_step)
  if start_step == 0 and jax.process_index() == 0:
    n_disc = discriminator_param_count(abstract_state.params)
    n_all = count_params(abstract_state.params)
    sizes = (f"discriminator {n_disc:,} params, generator+discriminator {n_all:,}"
             if has_generator else f"{n_all:,} params (no generator)")
    print(f"model: objective {config.objective}, {sizes}; "
          f"vocab {tokenizer.vocab_size}; {flops_per_step / 1e9:,.1f} GFLOP per step; "
          f"{jax.device_count()} device(s) ({jax.devices()[0].platform}, mesh data "
          f"{mesh.shape['data']} x fsdp {mesh.shape['fsdp']}); data {dataset_dir}", flush=True)
  elif jax.process_index() == 0:
    print(f"resuming from checkpoint at step {start_step} in {workdir}", flush=True)

  def evaluate(params) -> dict[str, float]:
    total = None
    for i, b in enumerate(eval_data):
      sums = eval_step(params, _device_batch(b, batch_sharding), i)
      total = sums if total is None else objective.add_sums(total, sums)
    metrics = objective.finalize_metrics(jax.device_get(total))
    return {f"eval/{k}": v for k, v in metrics.items()}

  def save(step, state):
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(train_iter)))

  # ----------------------------------------------------------------- loop
  tokens_per_step = t.batch_size * seq_len
  compiled, compile_s = training.compile_train_step(state, t.batch_size, seq_len)
  if jax.process_index() == 0:
    print(f"compiled the training step in {compile_s:.1f}s", flush=True)

  end = min(t.steps, t.stop_at) if t.stop_at > 0 else t.steps
  step = start_step
  last_eval: dict[str, float] = {}
  if step == 0:  # held-out metrics before any training, for comparison
    writer.write(0, evaluate(state.params))
  pending, to_log = [], None  # device metric sums not yet fetched
  input_s = 0.0
  clock = _Throughput(step)

  def perf(logged_step: int, input_wait_s: float):
    """perf/* scalars, computed once `logged_step`'s metrics have reached the host."""
    def measure():
      steps_per_s, busy_s = clock.measure(logged_step)
      return {"perf/steps_per_s": steps_per_s,
              "perf/tokens_per_s": steps_per_s * tokens_per_step,
              "perf/model_tflops_per_s": steps_per_s * flops_per_step / 1e12,
              "perf/input_wait_frac": min(1.0, input_wait_s / busy_s),
              "perf/eta_s": (end - logged_step) / max(steps_per_s, 1e-9),
              "perf/compile_s": compile_s}
    return measure

  preemption = _Preemption()
  unchecked = []  # per-step device losses not yet checked to be finite

  def check_finite(upto: int):
    """Raises NonFiniteLossError if a step up to `upto` had a non-finite loss."""
    losses = np.asarray(jax.device_get(unchecked), np.float64)
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
      raise NonFiniteLossError(upto - len(losses) + 1 + int(bad[0]), losses[bad[0]],
                               manager.latest_step(), workdir)
    unchecked.clear()

  try:
    while step < end:
      tin = time.perf_counter()
      batch = next(train_iter)
      input_s += time.perf_counter() - tin
      state, sums = compiled(state, batch)  # asynchronous: the host runs ahead
      step += 1
      pending.append(sums)
      unchecked.append(sums["loss"])
      if to_log is not None:  # the previous log step has finished by now: fetch it
        _log_train(writer, *to_log)
        to_log = None
      writer.advance(step)
      if step % t.log_every == 0 or step == end:
        to_log = (step, pending, perf(step, input_s))
        pending, input_s = [], 0.0
      pause = time.perf_counter()
      if step % t.eval_every == 0 or step == t.steps:
        if to_log is not None:
          _log_train(writer, *to_log)
          to_log = None
        pause = time.perf_counter()
        last_eval = evaluate(state.params)
        writer.write(step, last_eval)
      preempted = preemption.should_stop(step)
      if step % t.checkpoint_every == 0 or step == end or preempted:
        check_finite(step)  # never save a diverged state
        save(step, state)
      clock.pause(time.perf_counter() - pause)  # eval and checkpoint pauses don't count
      if preempted:
        manager.wait_until_finished()
        if jax.process_index() == 0:
          print(f"preempted: saved checkpoint {step} in {workdir}/checkpoints; rerun the "
                f"same command to continue", flush=True)
        break
    if to_log is not None:
      _log_train(writer, *to_log)
    if not last_eval:  # stopped early, or resumed at the end: still report held-out metrics
      last_eval = evaluate(state.params)
      writer.write(step, last_eval)
  except _NonFinite as e:  # a non-finite loss seen at a log step
    raise NonFiniteLossError(e.step, e.value, manager.latest_step(), workdir) from None
  finally:  # a save in flight completes whatever happens
    train_iter.close()
    preemption.restore()
    manager.wait_until_finished()
    manager.close()
    writer.close()
  return last_eval


class _NonFinite(Exception):
  """A logged loss (the mean since the previous log) is not finite."""

  def __init__(self, step: int, value: float):
    super().__init__(step, value)
    self.step, self.value = step, value


class NonFiniteLossError(UserInputError):
  """The training loss became NaN or infinite; nothing after the last good checkpoint
  was saved."""

  def __init__(self, step: int, value: float, last_good: int | None, workdir: str):
    self.step = step
    where = (f"the last good state is checkpoint {last_good} in {workdir}/checkpoints "
             f"(a rerun resumes from it)" if last_good is not None
             else "no checkpoint had been saved")
    super().__init__(f"training loss became {value} at step {step}; {where}; lower "
                     f"config.optim.learning_rate or check the data")


class _Preemption:
  """SIGTERM (spot/preemptible VMs, `kill`) asks the loop to checkpoint and stop.

  On several processes JAX's preemption sync point makes every process stop at the
  same step (a signal reaches hosts at different times).
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # no preemption service: fall back to this host's signal
        return self.requested
    return self.requested

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


class _Throughput:
  """Training steps per second between log points, excluding eval/checkpoint pauses.

  Each interval ends when the logged step's metrics reach the host (the fetch blocks
  until the device has run that step), so the host running ahead of the device does
  not inflate the first interval or shift time between intervals.
  """

  def __init__(self, step: int):
    self.step, self.time, self.paused = step, time.perf_counter(), 0.0

  def pause(self, seconds: float):
    self.paused += seconds

  def measure(self, step: int) -> tuple[float, float]:
    """(steps/s, busy seconds) since the previous call; starts the next interval."""
    now = time.perf_counter()
    busy_s = max(now - self.time - self.paused, 1e-9)
    steps_per_s = (step - self.step) / busy_s
    self.step, self.time, self.paused = step, now, 0.0
    return steps_per_s, busy_s


def _log_train(writer: MetricWriter, step: int, pending,
               perf: Callable[[], dict[str, float]]):
  host = _host_sums(pending)  # blocks until `step` has run on the device
  n = len(pending)
  grad_norm = float(host.pop("grad_norm")) / n
  lr = float(np.asarray(jax.device_get(pending[-1]["learning_rate"])))
  host.pop("learning_rate")
  metrics = objective.finalize_metrics(host)
  if not math.isfinite(metrics["loss"]):
    raise _NonFinite(step, metrics["loss"])
  scalars = {f"train/{k}": v for k, v in metrics.items()}
  scalars.update({"train/grad_norm": grad_norm, "train/learning_rate": lr})
  scalars.update(perf())
  writer.write(step, scalars)


if __name__ == "__main__":
  from electra_jax import cli  # pylint: disable=g-import-not-at-top
  _CONFIG, _WORKDIR = cli.define_config_flags()
  cli.run(lambda argv: train_and_evaluate(_CONFIG.value, _WORKDIR.value),
          huge_pages=True)
