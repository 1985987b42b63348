"""A workdir on an object store (gs://): every file train.py, reporting.py and
finetune.py write, and every file finetune.load_init and hf export read, goes through
etils.epath, and nothing treats the URL as a local path.

Cloud Storage is out of reach here, so epath's own fsspec backend (what serves gs://
when TensorFlow is not installed) is handed an in-memory object store for gs:// URLs:
files are objects, appends are refused, and a rename is a copy and a delete.  Orbax
writes array data through tensorstore's own GCS driver, which epath cannot redirect,
so the tests that train keep each gs:// workdir's checkpoints/ (only that) on local
disk by patching electra_jax.workdir.checkpoint_dir.  One short pretraining in
gs://bucket/runs/tiny (module fixture `gs_pretraining`) serves every test that reads
a pretraining workdir.
"""

import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import pathlib
import shutil
import struct

import jax
import ml_collections
import numpy as np
import pytest
from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem

from electra_jax import finetune
from electra_jax import hf
from electra_jax import parallel
from electra_jax import plot
from electra_jax import reporting
from electra_jax import train
from electra_jax import workdir as workdir_io
from electra_jax.errors import UserInputError


class _HttpError(Exception):
  """What an object-store client raises: not an OSError, several lines."""


class _ObjectStore(MemoryFileSystem):
  """An in-memory bucket store with Cloud Storage's limits (no appends)."""

  cachable = False  # a fresh store per test

  def __init__(self):
    super().__init__()
    self.store, self.pseudo_dirs = {}, [""]
    self.read_only = set()  # bucket names whose writes fail with a 403

  def _open(self, path, mode="rb", **kwargs):
    if "a" in mode:
      raise NotImplementedError(f"cannot append to object {path}")
    bucket = path.split("://", 1)[-1].split("/", 1)[0]
    if "w" in mode and bucket in self.read_only:
      raise _HttpError(f"403 Forbidden\nPOST https://storage.googleapis.com/{bucket}: the "
                       f"caller does not have storage.objects.create access")
    return super()._open(path, mode, **kwargs)

  def objects(self, prefix: str) -> list[str]:
    return sorted(k for k in self.store if k.startswith(prefix))


def _serve_gs(monkeypatch, store: _ObjectStore) -> _ObjectStore:
  """Serves gs:// URLs from `store` through epath's fsspec backend."""
  real_fs = epath_backend._FileSystemSpecBackend.fs  # pylint: disable=protected-access

  def fs(self, path):
    return store if os.fspath(path).startswith("gs://") else real_fs(self, path)

  monkeypatch.setattr(epath_backend._FileSystemSpecBackend, "fs", fs)  # pylint: disable=protected-access
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  return store


def _local_checkpoints(monkeypatch, root: pathlib.Path):
  """checkpoint_dir(gs://B/P) -> ROOT/B/P/checkpoints: orbax/tensorstore cannot reach the
  fake bucket."""
  real_checkpoint_dir = workdir_io.checkpoint_dir

  def checkpoint_dir(w):
    w = os.fspath(w)
    if not w.startswith("gs://"):
      return real_checkpoint_dir(w)
    return str(root / w[len("gs://"):] / "checkpoints")

  monkeypatch.setattr(workdir_io, "checkpoint_dir", checkpoint_dir)


@pytest.fixture
def bucket(monkeypatch):
  """gs:// URLs served by a fresh _ObjectStore through epath's fsspec backend."""
  return _serve_gs(monkeypatch, _ObjectStore())


def _record_local_calls(monkeypatch, cwd: pathlib.Path) -> list:
  """Records os.path.abspath and shutil.disk_usage calls given a gs:// URL, and moves
  into the empty directory `cwd`: a local write to 'gs://...' would create ./gs:/ there."""
  calls = []
  real_abspath, real_disk_usage = os.path.abspath, shutil.disk_usage

  def abspath(path):
    if "gs:" in str(path):
      calls.append(("os.path.abspath", path))
    return real_abspath(path)

  def disk_usage(path):
    if "gs:" in str(path):
      calls.append(("shutil.disk_usage", path))
    return real_disk_usage(path)

  monkeypatch.setattr(os.path, "abspath", abspath)
  monkeypatch.setattr(shutil, "disk_usage", disk_usage)
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  return calls


@pytest.fixture
def local_calls_on_urls(monkeypatch, tmp_path):
  """_record_local_calls for one test; at its end, nothing was written locally."""
  cwd = tmp_path / "cwd"
  yield _record_local_calls(monkeypatch, cwd)
  assert not os.listdir(cwd)


def _rows(path: str) -> list[dict]:
  return [json.loads(line) for line in epath.Path(path).read_text().splitlines()]


def _scalars(data: bytes) -> list[tuple[str, int, float]]:
  """(tag, step, value) of every scalar in a TensorBoard event file (TFRecords)."""
  reporting._summary_writer_class()  # pylint: disable=protected-access  # tensorboardX, no torch
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out, pos = [], 0
  while pos < len(data):
    (n,) = struct.unpack("<Q", data[pos:pos + 8])
    event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
    out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    pos += 12 + n + 4
  return out


# ----------------------------------------------------------------------------- helpers


def test_is_remote_and_resolve_leave_urls_alone():
  assert workdir_io.is_remote("gs://b/run") and not workdir_io.is_remote("/tmp/run")
  assert workdir_io.resolve("gs://b/run/") == "gs://b/run"
  assert workdir_io.resolve("run") == os.path.join(os.getcwd(), "run")
  assert workdir_io.resolve("~/run") == os.path.expanduser("~/run")
  assert workdir_io.checkpoint_dir("gs://b/run") == "gs://b/run/checkpoints"


@pytest.mark.parametrize("where", ["local", "gs"])
def test_write_text_atomic_replaces_the_whole_file_or_nothing(where, bucket, tmp_path):
  parent = str(tmp_path / "d") if where == "local" else "gs://bucket/d"
  path = parent + "/config.json"
  workdir_io.write_text_atomic(path, "first")  # creates the parent
  workdir_io.write_text_atomic(path, "second")
  assert epath.Path(path).read_text() == "second"
  with pytest.raises(UnicodeEncodeError):  # fails halfway through writing the text
    workdir_io.write_text_atomic(path, "third \ud800")
  assert epath.Path(path).read_text() == "second"
  assert [p.name for p in epath.Path(parent).iterdir()] == ["config.json"]  # no .tmp left


def test_copy_atomic_from_local_to_gs(bucket, tmp_path):
  src = tmp_path / "spm.model"
  src.write_bytes(b"\x00vocab")
  workdir_io.copy_atomic(str(src), "gs://bucket/run/vocab/spm.model")
  assert bucket.objects("gs://bucket/") == ["gs://bucket/run/vocab/spm.model"]
  assert bucket.cat("gs://bucket/run/vocab/spm.model") == b"\x00vocab"


# ----------------------------------------------------------------------------- MetricWriter


def test_metric_writer_on_gs_rewrites_metrics_and_keeps_a_resumed_runs_rows(
    bucket, local_calls_on_urls):
  run = "gs://bucket/run"
  w = reporting.MetricWriter(run, 10, "off")
  w.write(1, {"train/loss": 2.5})
  assert [r["step"] for r in _rows(run + "/metrics.jsonl")] == [1]  # visible at once
  assert len(bucket.objects(run + "/tensorboard/")) == 1  # copied at the flush
  w.write(2, {"train/loss": 2.0, "eval/disc_auc": 0.75})
  w.close()
  w = reporting.MetricWriter(run, 10, "off", initial_step=2)  # a resumed run
  w.write(3, {"train/loss": 1.5})
  w.close()
  rows = _rows(run + "/metrics.jsonl")
  assert all(isinstance(r.pop("time"), float) for r in rows)
  assert rows == [{"step": 1, "train/loss": 2.5},
                  {"step": 2, "eval/disc_auc": 0.75, "train/loss": 2.0},
                  {"step": 3, "train/loss": 1.5}]
  first, second = bucket.objects(run + "/tensorboard/")  # one event file per writer
  assert sorted(_scalars(bucket.cat(first)) + _scalars(bucket.cat(second))) == [
      ("eval/disc_auc", 2, 0.75), ("train/loss", 1, 2.5), ("train/loss", 2, 2.0),
      ("train/loss", 3, 1.5)]
  assert bucket.objects("gs://") == sorted([run + "/metrics.jsonl", first, second])
  assert plot.read_series(run)["train/loss"].steps == (1, 2, 3)
  assert not local_calls_on_urls


# ----------------------------------------------------------------------------- training


def test_unwritable_gs_workdir_is_a_one_line_error(bucket, tiny_config, corpus_glob,
                                                   cache_dir):
  bucket.read_only.add("locked")
  config = tiny_config(corpus_glob, cache_dir, steps=2)
  with pytest.raises(UserInputError) as e:
    train.train_and_evaluate(config, "gs://locked/run")
  assert str(e.value) == ("workdir gs://locked/run is not writable (403 Forbidden); pass a "
                          "writable --workdir")


@dataclasses.dataclass
class GsRun:
  """The pretraining run in gs://bucket/runs/tiny and what was seen while making it."""
  store: _ObjectStore
  run: str
  checkpoints: pathlib.Path  # root of the gs:// workdirs' local checkpoints/
  config: ml_collections.ConfigDict
  first_rows: list[int]  # metrics.jsonl steps once the run stopped at step 2
  refused: str  # the error of resuming with a changed model
  resume_out: str  # stdout of the resumed run
  local_calls: list  # os.path.abspath / shutil.disk_usage calls given a URL
  local_files: list[str]  # what the runs wrote in their (empty) working directory


@pytest.fixture(scope="module")
def gs_pretraining(tiny_config, corpus_glob, cache_dir, tmp_path_factory):
  """A tiny pretraining in gs://bucket/runs/tiny: the program test_operate.py compiles
  (steps=8), stopped at 2, refused a changed model, then resumed to 4."""
  root = tmp_path_factory.mktemp("gs_pretraining")
  store, run = _ObjectStore(), "gs://bucket/runs/tiny"
  config = tiny_config(corpus_glob, cache_dir, steps=8, log_every=1, eval_every=100,
                       checkpoint_every=2, stop_at=2)
  config.train.eval_batches = 1
  changed = tiny_config(corpus_glob, cache_dir, steps=8, log_every=1, eval_every=100,
                        checkpoint_every=2, stop_at=4)
  changed.model.num_layers += 1
  with pytest.MonkeyPatch.context() as mp:
    _serve_gs(mp, store)
    _local_checkpoints(mp, root)
    calls = _record_local_calls(mp, root / "cwd")
    train.train_and_evaluate(config, run + "/")
    first_rows = [r["step"] for r in _rows(run + "/metrics.jsonl")]
    with pytest.raises(UserInputError) as refused:  # read config.json
      train.train_and_evaluate(changed, run)
    config.train.stop_at = 4
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      train.train_and_evaluate(config, run)
    local_files = os.listdir(root / "cwd")
  return GsRun(store, run, root, config, first_rows, str(refused.value), out.getvalue(),
               calls, local_files)


@pytest.fixture
def gs_run(gs_pretraining, monkeypatch) -> GsRun:
  """gs_pretraining's bucket served for one test, its checkpoints/ redirected as before."""
  _serve_gs(monkeypatch, gs_pretraining.store)
  _local_checkpoints(monkeypatch, gs_pretraining.checkpoints)
  return gs_pretraining


@pytest.fixture(scope="module")
def local_copy(gs_pretraining, tmp_path_factory) -> str:
  """gs_pretraining's workdir copied to local disk, object by object."""
  run, store = gs_pretraining.run, gs_pretraining.store
  dest = tmp_path_factory.mktemp("local_copy") / "run"
  for name in store.objects(run + "/"):
    path = dest / name[len(run) + 1:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(store.cat(name))
  shutil.copytree(gs_pretraining.checkpoints / run[len("gs://"):] / "checkpoints",
                  dest / "checkpoints")
  return str(dest)


def test_pretraining_in_a_gs_workdir_writes_its_files_there_and_resumes(gs_run):
  run, bucket, config = gs_run.run, gs_run.store, gs_run.config
  saved = json.loads(bucket.cat(run + "/config.json"))
  assert saved["model"]["hidden_size"] == config.model.hidden_size
  _, tokenizer = train.read_workdir_config(run)
  assert tokenizer.path.startswith(run + "/vocab/")
  assert tokenizer.fingerprint == saved["vocab_fingerprint"]  # the built vocab's bytes
  assert gs_run.first_rows == [0, 1, 2, 2]
  assert "holds a run with model=" in gs_run.refused

  assert "resuming from checkpoint at step 2 in gs://bucket/runs/tiny" in gs_run.resume_out
  rows = _rows(run + "/metrics.jsonl")
  assert [r["step"] for r in rows] == [0, 1, 2, 2, 3, 4, 4]  # the first run's rows kept
  assert plot.read_series(run)["train/loss"].steps == (1, 2, 3, 4)
  events = bucket.objects(run + "/tensorboard/")
  assert len(events) == 2  # one per run
  logged = {(tag, step) for f in events for tag, step, _ in _scalars(bucket.cat(f))}
  assert {("train/loss", s) for s in (1, 2, 3, 4)} <= logged
  assert ("eval/disc_auc", 4) in logged
  files = [o[len(run) + 1:] for o in bucket.objects(run + "/") if "/tensorboard/" not in o]
  assert files == ["config.json", "metrics.jsonl", f"vocab/{os.path.basename(tokenizer.path)}"]
  local_ckpts = workdir_io.checkpoint_dir(run)
  assert not local_ckpts.startswith("gs://")
  assert sorted(d for d in os.listdir(local_ckpts) if d.isdigit()) == ["2", "4"]

  training = train.build_training(config, tokenizer, parallel.make_mesh(config.mesh))
  step, _ = train.restore_params(run, training.abstract_state.params)  # fine-tune, export
  assert step == 4
  assert not gs_run.local_calls and not gs_run.local_files


# ----------------------------------------------------------------------------- reading a run


def _assert_same_trees(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert isinstance(x, np.ndarray) and x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


def test_load_init_from_a_gs_workdir_equals_load_init_from_a_local_copy(
    gs_run, local_copy, local_calls_on_urls, capsys):
  cfg, params, tokenizer = finetune.load_init(gs_run.run + "/")
  assert f"init: {gs_run.run} checkpoint 4 " in capsys.readouterr().out
  local_cfg, local_params, local_tokenizer = finetune.load_init(local_copy)
  assert cfg == local_cfg and cfg.num_layers == gs_run.config.model.num_layers
  assert tokenizer.fingerprint == local_tokenizer.fingerprint
  assert tokenizer.path.startswith(gs_run.run + "/vocab/")
  _assert_same_trees(params, local_params)
  assert not local_calls_on_urls


def test_hf_export_of_a_gs_workdir_equals_the_export_of_a_local_copy(
    gs_run, local_copy, local_calls_on_urls, tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  from_gs = pathlib.Path(hf.export(gs_run.run, str(tmp_path / "from_gs")))
  from_local = pathlib.Path(hf.export(local_copy, str(tmp_path / "from_local")))
  files = sorted(str(p.relative_to(from_gs)) for p in from_gs.rglob("*") if p.is_file())
  assert files == sorted(str(p.relative_to(from_local)) for p in from_local.rglob("*")
                         if p.is_file())
  assert "discriminator/model.safetensors" in files
  for name in files:  # config, tokenizer files and tensors, byte for byte
    assert (from_gs / name).read_bytes() == (from_local / name).read_bytes(), name
  tensors = safetensors_numpy.load_file(str(from_gs / "discriminator" / "model.safetensors"))
  assert "electra.embeddings.word_embeddings.weight" in tensors
  assert not local_calls_on_urls


def test_init_and_export_errors_on_gs(bucket, local_calls_on_urls, tmp_path):
  bucket.pipe("gs://bucket/file", b"x")
  bucket.pipe("gs://bucket/other/notes.txt", b"x")
  bucket.pipe("gs://bucket/hf/discriminator/config.json", b"{}")
  for init, message in [("gs://bucket/missing", "does not exist"),
                        ("gs://bucket/file", "is a file"),
                        ("gs://bucket/other", "not a pretraining workdir"),
                        ("gs://bucket/hf", "Hugging Face directory gs://bucket/hf must be "
                                           "local")]:
    with pytest.raises(UserInputError, match=message):
      finetune.load_init(init)
  with pytest.raises(UserInputError, match="is not a pretraining workdir"):
    hf.export("gs://bucket/other", str(tmp_path / "export"))
  with pytest.raises(UserInputError, match="output_dir=gs://bucket/export must be a local"):
    hf.export("gs://bucket/other", "gs://bucket/export")
  assert not local_calls_on_urls


# ----------------------------------------------------------------------------- fine-tuning


def _toy_task(path: pathlib.Path) -> str:
  """A two-class sentence task: 64 train, 40 dev and 40 labelled test rows."""
  words = ["house", "letter", "sister", "morning", "garden", "money", "ball", "walk"]
  path.mkdir()
  for split, n, offset in (("train", 64, 0), ("dev", 40, 1), ("test", 40, 2)):
    rows = [f"the {words[(i + offset) % 8]} of my {words[i * 3 % 8]} was {i}\t"
            f"{'ab'[i % 2]}" for i in range(n)]
    (path / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n",
                                       encoding="utf-8")
  return str(path)


def _finetune_config(data_dir: str, init: str) -> ml_collections.ConfigDict:
  """configs/finetune.py for the toy task: 2 seeds of 2 steps each."""
  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "finetune.py"
  spec = importlib.util.spec_from_file_location("finetune_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.task, c.data_dir, c.init, c.seeds = "toy", data_dir, init, "1,2"
  c.max_seq_length, c.eval_batch_size, c.epochs, c.log_every = 32, 32, 1.0, 1
  return c


def _results_files(names: list[str]) -> list[str]:
  """The result files among a fine-tuning workdir's relative paths (no curves or
  checkpoints, which tests of reporting.py and of checkpoint_dir cover)."""
  return sorted(n for n in names if not n.endswith("metrics.jsonl")
                and not {"tensorboard", "checkpoints"} & set(n.split("/")))


def _comparable(results: dict) -> dict:
  """results.json less what differs between two identical runs: timings and init."""
  out = json.loads(json.dumps(results))
  del out["settings"]["init"]
  for seed in out["per_seed"].values():
    del seed["train_seconds"]
  return out


def test_finetuning_from_and_into_gs_workdirs_matches_local(
    gs_run, local_copy, local_calls_on_urls, tmp_path, capsys):
  data_dir = _toy_task(tmp_path / "toy")
  out = "gs://bucket/finetune/toy"
  remote = finetune.finetune_and_evaluate(_finetune_config(data_dir, gs_run.run), out)
  local_dir = tmp_path / "local"
  local = finetune.finetune_and_evaluate(_finetune_config(data_dir, local_copy),
                                         str(local_dir))
  assert remote["settings"]["init"] == gs_run.run
  assert local["settings"]["init"] == local_copy
  assert _comparable(remote) == _comparable(local)  # every seed's metrics, the summary

  objects = gs_run.store.objects(out + "/")
  names = _results_files([o[len(out) + 1:] for o in objects])
  assert names == _results_files([str(p.relative_to(local_dir))
                                  for p in local_dir.rglob("*") if p.is_file()]) == [
      "predictions/test.tsv", "results.json", "seed_1/metrics.json",
      "seed_1/predictions/test.tsv", "seed_1/settings.json", "seed_2/metrics.json",
      "seed_2/predictions/test.tsv", "seed_2/settings.json"]
  assert not [o for o in objects if ".tmp" in o]
  best = f"{out}/seed_{remote['best_seed']}/predictions/test.tsv"
  predictions = gs_run.store.cat(out + "/predictions/test.tsv")
  assert predictions == gs_run.store.cat(best)
  assert predictions == (local_dir / "predictions" / "test.tsv").read_bytes()
  saved = json.loads(gs_run.store.cat(out + "/results.json"))
  assert saved == json.loads(json.dumps(remote))
  assert [r["step"] for r in _rows(out + "/seed_1/metrics.jsonl")] == [1, 2]
  assert sorted(os.listdir(workdir_io.checkpoint_dir(out + "/seed_1"))) == ["2"]  # local

  capsys.readouterr()
  again = finetune.finetune_and_evaluate(_finetune_config(data_dir, gs_run.run), out)
  assert "seed 2: reusing the finished run in gs://bucket/finetune/toy/seed_2" in (
      capsys.readouterr().out)
  assert json.loads(json.dumps(again)) == saved
  assert not local_calls_on_urls


def test_unwritable_gs_finetuning_workdir_is_a_one_line_error(bucket, local_calls_on_urls,
                                                              tmp_path):
  bucket.read_only.add("locked")
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "of"]))
  config = _finetune_config(_toy_task(tmp_path / "toy"), "")
  config.vocab, config.model_size = str(vocab), "tiny"  # random init: no pretraining run
  with pytest.raises(UserInputError) as e:
    finetune.finetune_and_evaluate(config, "gs://locked/ft")
  assert str(e.value) == ("workdir gs://locked/ft is not writable (403 Forbidden); pass a "
                          "writable --workdir")
  assert not local_calls_on_urls
