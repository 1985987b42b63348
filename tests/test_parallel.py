"""Mesh shapes, the FSDP parameter rule and multi-process detection (electra_jax.parallel)."""

import functools
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from electra_jax import parallel
from electra_jax.errors import UserInputError

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_mesh_shape_fills_minus_one_and_rejects_misfits():
  assert parallel.mesh_shape(-1, 1, 8) == (8, 1)
  assert parallel.mesh_shape(2, -1, 8) == (2, 4)
  assert parallel.mesh_shape(-1, 8, 8) == (1, 8)
  assert parallel.mesh_shape(4, 2, 8) == (4, 2)
  for data, fsdp, match in [(-1, -1, "at most one"), (0, 1, "positive"),
                            (-1, 3, "does not divide"), (2, 2, "but there are 8")]:
    with pytest.raises(UserInputError, match=match):
      parallel.mesh_shape(data, fsdp, 8)


def test_param_rule():
  # Largest dimension the fsdp size divides; ties go to the last one.
  assert parallel.param_spec((30522, 128), 8) == P(None, "fsdp")
  assert parallel.param_spec((1024, 4096), 8) == P(None, "fsdp")
  assert parallel.param_spec((4096, 1024), 8) == P("fsdp", None)
  assert parallel.param_spec((256, 256), 4) == P(None, "fsdp")
  # Never the stacked-layer axis of scanned layers, even when it is the largest.
  assert parallel.param_spec((512, 64, 64), 8, stacked=True) == P(None, None, "fsdp")
  assert parallel.param_spec((16, 1024), 16, stacked=True) == P(None, "fsdp")
  # Small, indivisible or unsharded tensors stay replicated.
  assert parallel.param_spec((256,), 8) == P()
  assert parallel.param_spec((30522, 127), 8) == P()
  assert parallel.param_spec((1024, 1024), 1) == P()
  assert parallel.param_spec((), 8) == P()


def test_state_shardings_follow_paths():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), parallel.AXES)
  tree = {"encoder": {"layer": {"kernel": jax.ShapeDtypeStruct((4, 64, 64), "float32")}},
          "bias": jax.ShapeDtypeStruct((64,), "float32")}
  shardings = parallel.state_shardings(tree, mesh)
  assert shardings["bias"].spec == P()
  assert shardings["encoder"]["layer"]["kernel"].spec == P()  # fsdp=1: replicated


def test_distributed_detection(monkeypatch):
  for k in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_NTASKS",
            "SLURM_STEP_NODELIST", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(k, raising=False)
  assert not parallel._is_multiprocess_environment()  # pylint: disable=protected-access
  assert parallel.initialize_distributed("auto") is False
  assert parallel.initialize_distributed("off") is False
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")
  assert not parallel._is_multiprocess_environment()  # pylint: disable=protected-access
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3")
  assert parallel._is_multiprocess_environment()  # pylint: disable=protected-access
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert not parallel._is_multiprocess_environment()  # sbatch shell, not srun  # pylint: disable=protected-access
  monkeypatch.setenv("SLURM_STEP_NODELIST", "node[1-4]")
  assert parallel._is_multiprocess_environment()  # pylint: disable=protected-access
  with pytest.raises(UserInputError, match="'auto', 'on' or 'off'"):
    parallel.initialize_distributed("yes")


# ----------------------------------------------------------------------------- accumulation


def test_accumulated_micro_batches_equal_one_large_batch():
  """Averaged gradients of k micro-batches == the gradient of the whole batch, for a
  loss that is a mean over rows; metric sums add up."""
  from electra_jax import train  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)}
  batch = {"x": jnp.asarray(rng.standard_normal((12, 5)), jnp.float32),
           "y": jnp.asarray(rng.standard_normal((12, 3)), jnp.float32)}
  keys_seen = []

  def grad_fn(p, b, key):
    def loss(p):
      return jnp.mean((b["x"] @ p["w"] - b["y"]) ** 2)
    keys_seen.append(key)
    return jax.grad(loss)(p), {"rows": jnp.asarray(b["x"].shape[0], jnp.float32),
                               "x_sum": jnp.sum(b["x"])}

  key = jax.random.key(3)
  full_g, full_s = grad_fn(params, batch, key)
  for k in (2, 3, 4):
    g, s = jax.jit(lambda p, b, key, k=k: train.accumulate_gradients(grad_fn, p, b, key, k))(
        params, batch, key)
    np.testing.assert_allclose(g["w"], full_g["w"], rtol=1e-5, atol=1e-6)
    assert float(s["rows"]) == 12.0
    np.testing.assert_allclose(float(s["x_sum"]), float(full_s["x_sum"]), rtol=1e-5)


def step_config(objective: str, accum: int):
  """A 2-layer, 32-wide pretraining config with dropout, batch 8 x 32 (the step tests)."""
  from electra_jax.config import pretrain_config  # pylint: disable=g-import-not-at-top
  c = pretrain_config("tiny")
  c.objective = objective
  if objective == "mlm":
    c.model.embedding_sharing = "tied"
  c.data.max_seq_length = 32
  c.model.num_layers, c.model.hidden_size, c.model.num_heads = 2, 32, 2
  c.model.intermediate_size, c.model.embedding_size = 64, 32
  c.model.dropout_rate = c.model.attention_dropout_rate = 0.1
  c.train.batch_size, c.train.grad_accum_steps = 8, accum
  return c


def one_step(config, mesh, batch):
  """(params, metric sums) after one training step of `config` on `mesh` from init."""
  from electra_jax import aot, train  # pylint: disable=g-import-not-at-top
  training = train.build_training(config, aot.StandInTokenizer(300), mesh)
  state = training.init_state(training.init_key)
  batch = {k: jax.device_put(v, training.batch_sharding) for k, v in batch.items()}
  state, sums = training.train_step(state, batch)
  return jax.device_get(state.params), jax.device_get(sums)


def assert_same_params(want, got):
  for path, a in jax.tree_util.tree_leaves_with_path(want):
    b = functools.reduce(lambda t, k: t[k.key], path, got)
    np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("objective", ["electra", "mlm"])
def test_accumulated_training_step_equals_the_whole_batch_step(objective):
  """The real pretraining step, random masks, sampling and dropout included:
  grad_accum_steps=4 gives the parameters and metric sums of one step on the whole
  batch (every row has as many real tokens, so per-micro-batch means average to the
  whole batch's)."""
  rng = np.random.default_rng(0)
  batch = {"input_ids": jnp.asarray(rng.integers(104, 300, (8, 32)), jnp.int32),
           "input_mask": jnp.ones((8, 32), jnp.int32),
           "segment_ids": jnp.asarray(np.repeat([[0] * 16 + [1] * 16], 8, 0), jnp.int32)}
  results = {}
  for accum in (1, 4):
    c = step_config(objective, accum)
    results[accum] = one_step(c, parallel.make_mesh(c.mesh, jax.devices()[:1]), batch)
  (p1, s1), (p4, s4) = results[1], results[4]
  assert_same_params(p1, p4)
  assert set(s1) == set(s4)
  assert float(s1["batches"]) == 1 and float(s4["batches"]) == 4
  for name in s1:
    # 'loss' is a mean per (micro-)batch, summed, as 'batches' counts them; the rest add.
    want = s1[name] * 4 if name == "loss" else s1[name]
    if name != "batches":
      np.testing.assert_allclose(s4[name], want, rtol=1e-4, atol=1e-4, err_msg=name)


# ----------------------------------------------------------------------------- equivalence

WORKER = pathlib.Path(__file__).with_name("parallel_run.py")


def _run_worker(tmp_path, name, corpus_glob, cache_dir, data, fsdp, devices=1, env=None,
                accum=1):
  out = tmp_path / f"{name}.npz"
  e = dict(os.environ)
  # Every worker, the reference included, compiles with the same flags, so the runs
  # stay comparable; like tests/model_helpers.py's `_jit`, they skip XLA's costly LLVM
  # backend passes (the runs check values, not speed): compiling is most of a worker's
  # time, and this takes about a third off it.
  e["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
  e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
  # The suite's persistent compilation cache (tests/conftest.py) rather than a fresh
  # temporary one per worker: no worker leaves a cache directory of its own behind, and
  # a program compiled once (by any worker, or a rerun) is read back, not compiled again.
  e["ELECTRA_JAX_TEST_XLA_CACHE"] = jax.config.jax_compilation_cache_dir
  e.update(env or {})
  cmd = [sys.executable, str(WORKER), str(out), str(tmp_path / name), corpus_glob, cache_dir,
         str(data), str(fsdp), str(accum)]
  return out, subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)


def _wait(proc, what):
  out, _ = proc.communicate(timeout=900)
  assert proc.returncode == 0, f"{what} failed:\n{out[-3000:]}"
  return out


def _load(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def _assert_same_run(a, b, what):
  assert int(a["__step"]) == int(b["__step"]) == 3
  names = sorted(k for k in a if not k.startswith("__"))
  assert names == sorted(k for k in b if not k.startswith("__"))
  for k in names:
    np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-6, err_msg=f"{what}: {k}")
  np.testing.assert_allclose(a["__eval_loss"], b["__eval_loss"], rtol=1e-5, err_msg=what)


@pytest.fixture(scope="module")
def reference_run(tiny_config, tmp_path_factory, corpus_glob, cache_dir):
  """One device, one process: what every parallel layout must reproduce.

  (tmp, get): the run starts here and `get()` waits for its result, so that a test
  starts its own layouts before it waits and the workers compile side by side (a
  worker is mostly compiling, and alone it leaves part of the machine idle).
  """
  from electra_jax.data.select import prepare_dataset  # pylint: disable=g-import-not-at-top
  # Workers that run side by side must not race to build the shared data cache: build
  # it (vocab, dataset) here first; the workers' data config asks for the same one.
  prepare_dataset(tiny_config(corpus_glob, cache_dir).data)
  tmp = tmp_path_factory.mktemp("parallel")
  out, proc = _run_worker(tmp, "reference", corpus_glob, cache_dir, data=-1, fsdp=1)
  result = {}

  def get():
    if "error" in result:
      pytest.fail(result["error"])
    if "run" not in result:
      try:
        _wait(proc, "1-device run")
      except AssertionError as e:
        result["error"] = str(e)
        raise
      result["run"] = _load(out)
    return result["run"]

  yield tmp, get
  _stop(proc)


def _stop(*procs):
  """Ends workers a failed test left running (none, when every test passed)."""
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()


def test_eight_devices_data_and_fsdp_meshes_match_one_device(reference_run, corpus_glob,
                                                             cache_dir):
  tmp, reference = reference_run
  layouts = [("data8", 8, 1), ("data2_fsdp4", 2, 4)]
  procs = {name: _run_worker(tmp, name, corpus_glob, cache_dir, data, fsdp, devices=8)
           for name, data, fsdp in layouts}
  try:
    ref = reference()
    runs = {}
    for name, data, fsdp in layouts:
      out, proc = procs[name]
      log = _wait(proc, name)
      assert f"mesh data {data} x fsdp {fsdp}" in log
      runs[name] = _load(out)
  finally:
    _stop(*(proc for _, proc in procs.values()))
  assert int(runs["data8"]["__devices"]) == 8 and int(runs["data8"]["__sharded_leaves"]) == 0
  assert int(runs["data2_fsdp4"]["__sharded_leaves"]) > 0  # the embedding tables at least
  for name, run in runs.items():
    _assert_same_run(ref, run, name)


def test_two_processes_match_one_process(reference_run, corpus_glob, cache_dir):
  """jax.distributed over 127.0.0.1: each process feeds its rows of the global batch."""
  tmp, reference = reference_run
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = []
  for pid in range(2):
    env = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": str(pid)}
    procs.append(_run_worker(tmp, "two_processes", corpus_glob, cache_dir, data=-1, fsdp=1,
                             env=env))
  try:
    ref = reference()
    for pid, (_, proc) in enumerate(procs):
      _wait(proc, f"process {pid}")
  finally:
    _stop(*(proc for _, proc in procs))
  run = _load(procs[0][0])
  assert int(run["__processes"]) == 2 and int(run["__devices"]) == 2
  _assert_same_run(ref, run, "2 processes")


def test_config_checks_for_mesh_and_accumulation():
  from electra_jax import train  # pylint: disable=g-import-not-at-top
  from electra_jax.config import pretrain_config  # pylint: disable=g-import-not-at-top
  c = pretrain_config("tiny")
  c.train.grad_accum_steps = 3  # 32 rows do not split into 3 micro-batches
  with pytest.raises(UserInputError, match="grad_accum_steps=3 must be positive and divide"):
    train.validate_config(c)
  c.train.grad_accum_steps = 4
  train.validate_config(c)  # 8 rows per micro-batch on 1 device
  c.mesh.fsdp = 2  # 2 x ? devices on a 1-device machine
  with pytest.raises(UserInputError, match="does not divide the 1 devices"):
    train.validate_config(c)


_SHARD_MAP_STEP = r'''
import sys
import jax, jax.numpy as jnp, numpy as np
from electra_jax import parallel
sys.path.insert(0, "tests")
from test_parallel import assert_same_params, one_step, step_config
objective, accum = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
lengths = [32, 20, 9, 32, 27, 14, 32, 5]  # unequal rows: per-device means would differ
mask = (np.arange(32)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
batch = {"input_ids": jnp.asarray(rng.integers(104, 300, (8, 32)) * mask, jnp.int32),
         "input_mask": jnp.asarray(mask), "segment_ids": jnp.zeros((8, 32), jnp.int32)}
results = {}
for devices in (1, 4):
  c = step_config(objective, accum)
  mesh = parallel.make_mesh(c.mesh, jax.devices()[:devices])
  assert parallel.splits_batch_by_shard_map(mesh) == (devices > 1)
  results[devices] = one_step(c, mesh, batch)
(p1, s1), (p4, s4) = results[1], results[4]
assert_same_params(p1, p4)
assert set(s1) == set(s4)
for k in s1:
  np.testing.assert_allclose(s4[k], s1[k], rtol=2e-5, atol=1e-5, err_msg=k)
print("same", sorted(s1))
'''


@pytest.mark.parametrize("objective,accum", [("electra", 2), ("mlm", 1)])
def test_cpu_shard_map_step_equals_the_one_device_step(objective, accum):
  """On a CPU mesh of several devices (fsdp=1) the step splits the batch by shard_map
  (train_step.shard_map_gradients): with dropout, rows of unequal length and
  accumulation it gives the one-device step's parameters and metric sums (the losses
  divide by the whole batch's weights; each device draws its rows' random numbers)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-c", _SHARD_MAP_STEP, objective, str(accum)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "same" in run.stdout and "'batches'" in run.stdout


def test_cpu_devices_setting():
  """config.mesh.cpu_devices: 1 leaves JAX alone, an explicit count applies or fails
  with a clear error after JAX started; 0 (automatic) never fails, and leaves JAX
  alone once it has started (this process pins its count in conftest.py)."""
  assert parallel.use_cpu_devices(1) == 0
  with pytest.raises(UserInputError, match=">= 0"):
    parallel.use_cpu_devices(-1)
  jax.devices()  # JAX has started in this process
  with pytest.raises(UserInputError, match="fresh process"):
    parallel.use_cpu_devices(2)
  assert parallel.use_cpu_devices(0, rows=32) == 0
  assert len(jax.devices()) == len(jax.devices("cpu"))


def test_automatic_cpu_devices_are_cores_that_divide_the_batch():
  count = parallel.automatic_cpu_device_count
  assert parallel.MIN_CPU_DEVICE_TOKENS == 512
  assert count(rows=32, cores=2, row_tokens=128) == 2
  assert count(rows=32, cores=1, row_tokens=128) == 1
  assert count(rows=12, cores=8, row_tokens=512) == 6  # not 8: 12 rows split evenly
  assert count(rows=7, cores=8, row_tokens=512) == 7
  assert count(rows=6, cores=4, row_tokens=512) == 3
  assert count(rows=13, cores=8, row_tokens=512) == 1
  assert count(rows=None, cores=8) == 8
  # At least 512 tokens per device: fewer devices, or one, for small steps.
  assert count(rows=128, cores=64, row_tokens=128) == 32
  assert count(rows=32, cores=8, row_tokens=64) == 4
  assert count(rows=8, cores=2, row_tokens=64) == 1  # 256 tokens per device: one device
  assert count(rows=16, cores=2, row_tokens=64) == 2


_AUTOMATIC_DEVICES = """
import json, sys, jax
from electra_jax import parallel
n = parallel.use_cpu_devices(0, rows=32, row_tokens=128, distributed=sys.argv[1])
print(json.dumps([n, len(jax.devices())]))
"""


@pytest.mark.parametrize("setting", ["fresh", "xla_flags", "multiprocess", "distributed_on"])
def test_automatic_cpu_devices_in_a_fresh_process(setting):
  """A fresh process gets one device per core (as many as divide the rows); a count
  chosen through XLA_FLAGS stands; a multi-process run keeps one device per process."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  if setting == "xla_flags":
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=3"
  elif setting == "multiprocess":
    env["JAX_COORDINATOR_ADDRESS"] = "127.0.0.1:1"  # never contacted: nothing initializes
  distributed = "on" if setting == "distributed_on" else "auto"
  run = subprocess.run([sys.executable, "-c", _AUTOMATIC_DEVICES, distributed], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  applied, devices = json.loads(run.stdout.strip().splitlines()[-1])
  cores = parallel.host_cores()
  want = parallel.automatic_cpu_device_count(rows=32, cores=cores, row_tokens=128)
  if setting == "fresh":
    assert (applied, devices) == ((want if want > 1 else 0), want)
  elif setting == "xla_flags":
    assert (applied, devices) == (0, 3)
  else:
    assert (applied, devices) == (0, 1)
