"""Failures a long pretraining run must survive: preemption (SIGTERM), a checkpoint
write killed midway, a corrupted checkpoint, a diverged loss, an unusable workdir."""

import json
import os
import pathlib
import shutil
import signal

import jax
import numpy as np
import pytest

from electra_jax import reporting
from electra_jax import train
from electra_jax.errors import UserInputError


def _config(tiny_config, corpus_glob, cache_dir, steps, **kw):
  kw = {"log_every": 1, "eval_every": 100, "checkpoint_every": 100, **kw}
  return tiny_config(corpus_glob, cache_dir, steps=steps, **kw)


def _state(workdir, step=None):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = mngr.latest_step() if step is None else step
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return step, restored["state"]


def _losses(workdir):
  rows = [json.loads(l) for l in pathlib.Path(workdir, "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _assert_same_state(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)


@pytest.fixture
def straight(straight_run):
  """An uninterrupted 8-step run of `_config(..., 8)` (conftest.py's, shared with
  tests/test_train.py's resume test)."""
  return straight_run


def test_sigterm_saves_the_current_step_and_a_rerun_continues_exactly(
    straight, tiny_config, corpus_glob, cache_dir, tmp_path, monkeypatch, capsys):
  real_write = reporting.MetricWriter.write

  def write(self, step, scalars):
    if step == 3 and "train/loss" in scalars:
      os.kill(os.getpid(), signal.SIGTERM)  # a real signal, as a spot VM sends it
    return real_write(self, step, scalars)

  monkeypatch.setattr(reporting.MetricWriter, "write", write)
  config = _config(tiny_config, corpus_glob, cache_dir, 8)
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  out = capsys.readouterr().out
  saved = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
  assert saved == [4]  # step 3's log is fetched during step 4; checkpoint_every is 100
  assert "preempted: saved checkpoint 4" in out
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed
  monkeypatch.setattr(reporting.MetricWriter, "write", real_write)
  train.train_and_evaluate(config, str(workdir))
  assert "resuming from checkpoint at step 4" in capsys.readouterr().out
  step_a, state_a = _state(straight)
  step_b, state_b = _state(workdir)
  assert step_a == step_b == 8
  _assert_same_state(state_a, state_b)
  a, b = _losses(straight), _losses(workdir)
  assert all(a[s] == pytest.approx(b[s], rel=1e-6) for s in range(1, 9))


def test_killed_write_and_corrupt_checkpoint_fall_back_to_the_last_good_one(
    straight, tiny_config, corpus_glob, cache_dir, tmp_path, capsys):
  workdir = tmp_path / "run"
  config = _config(tiny_config, corpus_glob, cache_dir, 8, checkpoint_every=2, stop_at=6)
  train.train_and_evaluate(config, str(workdir))
  ckpts = workdir / "checkpoints"
  assert sorted(d for d in os.listdir(ckpts) if d.isdigit()) == ["2", "4", "6"]
  # A write killed midway: orbax's temporary directory, never renamed into place.
  shutil.copytree(ckpts / "6", ckpts / "8.orbax-checkpoint-tmp-1795000000000000")
  # A checkpoint corrupted after the fact: every file of step 6's state truncated.
  for f in (ckpts / "6" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"")
  config = _config(tiny_config, corpus_glob, cache_dir, 8, checkpoint_every=2)
  train.train_and_evaluate(config, str(workdir))
  out = capsys.readouterr().out
  assert "checkpoint 6 in" in out and "is unreadable" in out
  assert "resuming from checkpoint at step 4" in out
  assert any(d.startswith("corrupt-6-") for d in os.listdir(ckpts))  # kept for inspection
  step, state = _state(workdir)
  assert step == 8
  _assert_same_state(_state(straight)[1], state)


def test_non_finite_loss_stops_without_saving_the_bad_state(
    tiny_config, corpus_glob, cache_dir, tmp_path, monkeypatch):
  """Batch 3 is poisoned to give a NaN loss: the run stops at the next checkpoint
  boundary naming step 3, and only the good checkpoint 2 is on disk.

  The poison is token ids past the end of the vocabulary, whose embedding lookups are
  NaN, so the unchanged training step computes the NaN itself: the run compiles the
  same program as `straight` (taken from the compilation cache) instead of a patched
  loss of its own.
  """
  real_batch = train._device_batch  # pylint: disable=protected-access
  calls = {"n": 0}

  def poisoned_batch(batch, sharding):
    calls["n"] += 1
    if calls["n"] == 4:  # call 1 is the step-0 evaluation's batch
      batch = {**batch, "input_ids": np.full_like(batch["input_ids"], 1_000_000)}
    return real_batch(batch, sharding)

  monkeypatch.setattr(train, "_device_batch", poisoned_batch)
  config = _config(tiny_config, corpus_glob, cache_dir, 8, log_every=100, checkpoint_every=2)
  config.train.eval_batches = 1
  with pytest.raises(train.NonFiniteLossError, match=r"became nan at step 3; the last good state is checkpoint 2 "):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert sorted(d for d in os.listdir(tmp_path / "run" / "checkpoints") if d.isdigit()) == ["2"]


def test_unusable_workdir_fails_before_training(tiny_config, corpus_glob, cache_dir, tmp_path,
                                                monkeypatch):
  config = _config(tiny_config, corpus_glob, cache_dir, 2)
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(UserInputError, match="is not writable"):
    train.train_and_evaluate(config, str(blocker / "run"))
  monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(  # pylint: disable=protected-access
      10**9, 10**9 - 1000, 1000))
  with pytest.raises(UserInputError, match=r"GiB free but 4 checkpoints"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists() or not os.listdir(
      tmp_path / "run" / "checkpoints")
