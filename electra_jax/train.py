"""ELECTRA pretraining.

    python -m electra_jax.train --config=configs/small.py --workdir=DIR \
        [--config.data.text='corpus/*.txt'] [--config.train.steps=...]

`train_and_evaluate(config, workdir)` is the whole job, importable for tests.
It reads top to bottom: setup, data, model and optimizer, checkpoints, the
jitted steps, then the training loop.  `build_training` (electra_jax/train_step.py)
makes the model, the optimizer and the jitted steps; electra_jax/train_workdir.py
holds what the run keeps in its workdir (config.json, vocab/, checkpoints/).
"""

import math
import os
import signal
import threading
import time
from typing import Callable

import jax
import ml_collections
import numpy as np
from etils import epath

from electra_jax import flops
from electra_jax import objective
from electra_jax import parallel
from electra_jax import workdir as workdir_io
from electra_jax.errors import UserInputError
from electra_jax.model import count_params, discriminator_param_count, objective_heads
from electra_jax.reporting import MetricWriter
from electra_jax.tokenization import load_tokenizer
from electra_jax.train_step import TrainState
from electra_jax.train_step import Training
from electra_jax.train_step import accumulate_gradients
from electra_jax.train_step import build_training
from electra_jax.train_step import validate_config
from electra_jax.train_workdir import check_workdir_config
from electra_jax.train_workdir import check_workdir_space
from electra_jax.train_workdir import check_workdir_writable
from electra_jax.train_workdir import read_workdir_config
from electra_jax.train_workdir import restore_params
from electra_jax.train_workdir import save_state
from electra_jax.train_workdir import save_vocab

__all__ = [
    "NonFiniteLossError", "TrainState", "Training", "accumulate_gradients",
    "build_training", "check_workdir_config", "check_workdir_space",
    "check_workdir_writable", "read_workdir_config", "restore_params", "save_state",
    "save_vocab", "train_and_evaluate", "validate_config",
]


def _device_batch(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def _host_sums(sums_list) -> dict[str, np.ndarray]:
  """Adds a list of per-step metric sums on the host (one transfer)."""
  fetched = jax.device_get(sums_list)
  total = fetched[0]
  for s in fetched[1:]:
    total = jax.tree.map(np.add, total, s)
  return total


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
  t = config.train
  parallel.use_cpu_devices(  # before anything starts JAX's backends
      config.mesh.cpu_devices, rows=t.batch_size // max(t.grad_accum_steps, 1),
      row_tokens=config.data.max_seq_length, distributed=config.distributed)
  parallel.initialize_distributed(config.distributed)  # before anything touches a device
  validate_config(config)
  workdir = workdir_io.resolve(workdir)  # gs://... stays as it is
  check_workdir_writable(workdir)
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
