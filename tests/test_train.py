"""End-to-end pretraining on real text, resumption, and the trainer's input checks."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from electra_jax import parallel, train
from electra_jax.config import pretrain_config
from electra_jax.errors import UserInputError


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _most_frequent_token_share(config):
  """Share of the most frequent ordinary token among held-out tokens: the accuracy of
  a generator that ignores context and always predicts it."""
  from electra_jax.data.dataset import open_dataset
  from electra_jax.data.select import prepare_dataset
  built = open_dataset(prepare_dataset(config.data))
  val = built.sources["validation"]
  ids = np.concatenate([np.asarray(val[i]["input_ids"]) for i in range(len(val))])
  ids = ids[ids > 4]  # ordinary tokens (the five specials take ids 0-4)
  return np.bincount(ids).max() / len(ids)


def test_tiny_run_learns_on_held_out_text(tiny_pretrained_run):
  workdir, config, final = tiny_pretrained_run  # see its docstring in conftest.py
  workdir = pathlib.Path(workdir)
  rows = read_metrics(workdir)
  start = next(r for r in rows if r["step"] == 0 and "eval/disc_auc" in r)
  print("held-out at start:", {k: round(v, 4) for k, v in start.items() if k.startswith("eval/")})
  print("held-out at end:", {k: round(v, 4) for k, v in final.items()})
  # Chance level at the start: the generator knows nothing, the discriminator guesses.
  assert abs(start["eval/disc_auc"] - 0.5) < 0.1
  assert start["eval/masked_lm_accuracy"] < 0.02
  # The generator beats always guessing the most frequent token (~6%), so it uses
  # context; the discriminator ranks replaced tokens clearly above original ones.
  unigram = _most_frequent_token_share(config)
  print("most frequent held-out token share:", round(float(unigram), 4))
  assert final["eval/masked_lm_accuracy"] > 1.5 * unigram
  assert final["eval/masked_lm_loss"] < start["eval/masked_lm_loss"] - 1.0
  assert final["eval/disc_auc"] > 0.65
  assert final["eval/disc_loss"] < start["eval/disc_loss"] - 0.25
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [200, 400, 600]
  for r in train_rows:
    for key in ("train/learning_rate", "train/grad_norm", "perf/tokens_per_s",
                "perf/eta_s", "train/disc_auc", "train/sampled_masked_lm_accuracy"):
      assert key in r and np.isfinite(r[key])
  assert train_rows[-1]["train/loss"] < train_rows[0]["train/loss"]
  assert os.listdir(workdir / "tensorboard")
  assert sorted(os.listdir(workdir / "checkpoints")) == ["300", "600"]
  assert os.listdir(workdir / "vocab") == ["spm.model"]


def _params(workdir):
  import orbax.checkpoint as ocp
  path = pathlib.Path(workdir) / "checkpoints"
  step = ocp.CheckpointManager(path).latest_step()
  # As host arrays: the run that wrote it may have had other devices than this process.
  checkpointer = ocp.PyTreeCheckpointer()
  meta = checkpointer.metadata(path / str(step) / "state").item_metadata.tree
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
  return step, checkpointer.restore(path / str(step) / "state",
                                    args=ocp.args.PyTreeRestore(restore_args=as_numpy))


def test_resume_matches_uninterrupted_run(straight_run, straight_config, corpus_glob, cache_dir,
                                          tmp_path):
  # straight_run: `straight` run uninterrupted, once for this test and test_operate.py's.
  steps = 8
  straight = straight_config(corpus_glob, cache_dir)
  part = straight_config(corpus_glob, cache_dir, stop_at=steps // 2)
  train.train_and_evaluate(part, str(tmp_path / "resumed"))
  assert _params(tmp_path / "resumed")[0] == steps // 2
  train.train_and_evaluate(straight, str(tmp_path / "resumed"))

  step_a, state_a = _params(straight_run)
  step_b, state_b = _params(tmp_path / "resumed")
  assert step_a == step_b == steps
  leaves_a = jax.tree.leaves(state_a)
  leaves_b = jax.tree.leaves(state_b)
  assert len(leaves_a) == len(leaves_b)
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
  # Identical data order: every step's training loss (a function of its batch) matches.
  loss = lambda rows: {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
  a, b = loss(read_metrics(straight_run)), loss(read_metrics(tmp_path / "resumed"))
  assert sorted(b) == list(range(1, steps + 1))
  for s in range(1, steps + 1):
    assert a[s] == pytest.approx(b[s], rel=1e-6), s


def _overrides(config, base, prefix=""):
  """`--config.x.y=v` flags that turn `base` into `config`."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _overrides(value, base[key], f"{prefix}{key}.")
    elif value != base[key]:
      yield f"--config.{prefix}{key}={value}"


def test_cli_runs_a_core_per_device_with_the_one_device_result(straight_run, straight_config,
                                                               corpus_glob, cache_dir, tmp_path):
  """`python -m electra_jax.train` on a CPU host runs each core as a device by default
  (config.mesh.cpu_devices=0; shard_map splits the batch): straight_run's config gives
  straight_run's parameters and losses, which one device computed in this process."""
  straight = straight_config(corpus_glob, cache_dir)
  want_devices = parallel.automatic_cpu_device_count(
      rows=straight.train.batch_size, cores=parallel.host_cores(),
      row_tokens=straight.data.max_seq_length)
  repo = pathlib.Path(__file__).resolve().parents[1]
  spec = importlib.util.spec_from_file_location("tiny_config", repo / "configs" / "tiny.py")
  tiny = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tiny)
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  r = subprocess.run([sys.executable, "-m", "electra_jax.train", "--config=configs/tiny.py",
                      f"--workdir={tmp_path / 'run'}",
                      *_overrides(straight, tiny.get_config())],
                     capture_output=True, text=True, env={**env, "JAX_PLATFORMS": "cpu"},
                     timeout=600, cwd=repo)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"; {want_devices} device(s) (cpu, mesh data {want_devices} x fsdp 1)" in r.stdout
  step_a, state_a = _params(straight_run)
  step_b, state_b = _params(tmp_path / "run")
  assert step_a == step_b == 8
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-5, atol=2e-6)
  loss = lambda rows: {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
  a, b = loss(read_metrics(straight_run)), loss(read_metrics(tmp_path / "run"))
  assert sorted(b) == sorted(a) == list(range(1, 9))
  for s in a:
    assert b[s] == pytest.approx(a[s], rel=1e-5), s
  # The run resumes on another device count: this process's one device.
  train.train_and_evaluate(straight_config(corpus_glob, cache_dir, steps=10), str(tmp_path / "run"))
  assert _params(tmp_path / "run")[0] == 10


def test_resume_refuses_a_different_model(straight_config, corpus_glob, cache_dir, tmp_path):
  # 8 steps stopped after 2: straight_run's program, so it is read from the cache.
  config = straight_config(corpus_glob, cache_dir, checkpoint_every=1, stop_at=2)
  train.train_and_evaluate(config, str(tmp_path / "run"))
  config.model.hidden_size = 128
  with pytest.raises(UserInputError, match="model"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_resume_may_change_remat_and_dtype_but_not_the_model(tmp_path):
  """How the step is computed may change on resume (remat, bf16); the model may not."""
  config = pretrain_config("tiny")
  train.check_workdir_config(str(tmp_path), config, "vocab-fp")
  config.model.remat, config.model.dtype = "full", "bfloat16"
  train.check_workdir_config(str(tmp_path), config, "vocab-fp")  # accepted
  config.model.num_layers = 3
  with pytest.raises(UserInputError, match="model="):
    train.check_workdir_config(str(tmp_path), config, "vocab-fp")
  config.model.num_layers = pretrain_config("tiny").model.num_layers
  with pytest.raises(UserInputError, match="vocab_fingerprint"):
    train.check_workdir_config(str(tmp_path), config, "another-vocab")


def test_config_checks():
  c = pretrain_config("tiny")
  c.train.batch_size = 0
  with pytest.raises(UserInputError, match="batch_size"):
    train.validate_config(c)
  c = pretrain_config("tiny")
  c.objective = "bert"
  with pytest.raises(UserInputError, match="objective"):
    train.validate_config(c)


def _cli(args, env=None, timeout=300):
  return subprocess.run([sys.executable, "-m", "electra_jax.train", *args], capture_output=True,
                        text=True, env={**os.environ, **(env or {})}, timeout=timeout,
                        cwd=pathlib.Path(__file__).resolve().parents[1])


def test_cli_rejects_unknown_config_key(tmp_path):
  r = _cli(["--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.train.stepz=3"])
  assert r.returncode != 0
  assert "stepz" in r.stderr


def test_cli_rejects_batch_not_divisible_by_devices(tmp_path):
  r = _cli(["--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.train.batch_size=30"],
           env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 2, r.stderr
  lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "divisible by the 8 devices" in lines[0]


def test_throughput_excludes_pauses_and_counts_steps_between_fetches(monkeypatch):
  now = [100.0]
  monkeypatch.setattr(train.time, "perf_counter", lambda: now[0])
  clock = train._Throughput(step=10)  # pylint: disable=protected-access
  now[0] = 104.0
  clock.pause(2.0)  # e.g. an eval: 2 of the 4 seconds were not training
  assert clock.measure(20) == (5.0, 2.0)  # 10 steps in 2 busy seconds
  now[0] = 105.0
  assert clock.measure(30) == (10.0, 1.0)  # the pause does not carry over
