"""Shared test setup: a per-session persistent XLA compilation cache.

Several tests compile the same tiny training step (fresh run, resumed run,
refused run); caching compiled executables across them keeps the suite fast
without changing what any test checks.
"""

import atexit
import os
import shutil
import tempfile

import jax

# Set by a test for the workers it starts, which share the session's cache; otherwise a
# fresh directory, removed when the session ends (each run used to leave ~20 MB in /tmp).
_CACHE = os.environ.get("ELECTRA_JAX_TEST_XLA_CACHE")
if not _CACHE:
  _CACHE = tempfile.mkdtemp(prefix="xla-cache-")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# This process keeps JAX's own CPU device count (1, or what XLA_FLAGS asks for):
# the trainer's automatic one-device-per-core (config.mesh.cpu_devices=0) would
# otherwise apply if a trainer run were the first thing to start JAX, and the
# in-process tests would see one device or several depending on their order.
# Subprocess tests (the CLI, the workers) get the automatic count.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  jax.config.update("jax_num_cpu_devices", 1)


# ----------------------------------------------------------------------------- pretraining

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"


def _tiny_config(corpus_glob, cache_dir, **train_overrides):
  """configs/tiny.py's model on a slice of ../shared/corpus: vocab 2000, 64 tokens."""
  from electra_jax.config import pretrain_config  # pylint: disable=g-import-not-at-top
  c = pretrain_config("tiny")
  c.data.text = corpus_glob
  c.data.cache_dir = cache_dir
  c.data.vocab_size = 2000
  c.data.max_seq_length = 64
  c.data.validation_fraction = 0.05
  c.data.num_workers = 1
  c.train.batch_size = 32
  c.train.eval_batches = 4
  c.train.progress_bar = "off"
  for k, v in train_overrides.items():
    setattr(c.train, k, v)
  return c


@pytest.fixture
def tempdir(tmp_path, monkeypatch):
  """A fresh folder that Python's `tempfile` uses for this test (tmp_path/tmp).

  tfds' builders make a temporary directory they never remove when a dataset has no
  dataset_info.json yet (electra_jax/data/dataset.py's `_LocalDatasetInfo` spares our
  own builder): a test that prepares its own tfds dataset leaves it here, not in /tmp.
  """
  path = tmp_path / "tmp"
  path.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(path))
  return path


@pytest.fixture(scope="session")
def tiny_config():
  """The factory `tiny_config(corpus_glob, cache_dir, **train_overrides)`."""
  return _tiny_config


@pytest.fixture(scope="session")
def corpus_glob(tmp_path_factory):
  """1.7 MB of ../shared/corpus (Austen, Moby Dick, State of the Union addresses)."""
  corpus = SHARED / "corpus"
  if not corpus.exists():
    pytest.skip("../shared/corpus is not present")
  dest = tmp_path_factory.mktemp("corpus")
  for name, n in [("austen.txt", 700_000), ("moby_dick.txt", 500_000),
                  ("sotu.txt", 500_000)]:
    text = (corpus / name).read_bytes()[:n].decode("utf-8", "ignore")
    (dest / name).write_text(text, encoding="utf-8")
  return str(dest / "*.txt")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  """One data cache (vocab + built dataset) for every pretraining test."""
  return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def straight_run(corpus_glob, cache_dir, tmp_path_factory):
  """The workdir of an uninterrupted 8-step tiny run, run once.

  The run that tests/test_train.py's resume test and tests/test_operate.py's
  preemption and checkpoint-recovery tests compare their interrupted runs with; they
  build the same config with the `straight_config` fixture.
  """
  from electra_jax import train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("straight") / "run"
  train.train_and_evaluate(_straight_config(corpus_glob, cache_dir), str(workdir))
  return workdir


@pytest.fixture(scope="session")
def straight_config():
  """The factory `straight_config(corpus_glob, cache_dir, **train_overrides)`."""
  return _straight_config


def _straight_config(corpus_glob, cache_dir, **train_overrides):
  """`straight_run`'s config (8 steps, a log line per step, no eval or checkpoint on
  the way); the overrides (stop_at, checkpoint_every, ...) leave the compiled program
  as it is."""
  kw = {"steps": 8, "log_every": 1, "eval_every": 100, "checkpoint_every": 100,
        **train_overrides}
  return _tiny_config(corpus_glob, cache_dir, **kw)


@pytest.fixture(scope="session")
def tiny_pretrained_run(corpus_glob, cache_dir, tmp_path_factory):
  """A 600-step tiny pretraining, run once: (workdir, config, final held-out metrics).

  tests/test_train.py checks that it learns; tests/test_finetune.py fine-tunes from it.
  At this scale a generator sampling at temperature 1 matches the unigram distribution
  within ~100 steps, and detecting its replacements needs bigram-level context that
  neither this discriminator nor a minimal reference transformer (trained alone on
  unigram replacements) learns within 1000 steps: both sit at the base rate, AUC
  ~0.52.  Sampling at temperature 2 keeps the replacements detectable, so the run shows
  the whole loop learning in a test's budget; a half-width generator (the paper's upper
  end) learns context fast enough to beat the unigram guess.  The learning rate stays
  moderate with configs/tiny.py's 200 warmup steps: at 2e-3 with 50 warmup steps the
  held-out metrics were similar, but the discriminator's token states partly collapsed
  and fine-tuning from it stayed at the majority class on austen_book (measured).
  """
  from electra_jax import train  # pylint: disable=g-import-not-at-top
  config = _tiny_config(corpus_glob, cache_dir, steps=600, log_every=200, eval_every=300,
                        checkpoint_every=300)
  config.optim.learning_rate = 1.5e-3
  config.optim.warmup_steps = 200
  config.pretrain.temperature = 2.0
  config.model.generator_size = 0.5
  workdir = str(tmp_path_factory.mktemp("tiny_pretrained") / "run")
  final = train.train_and_evaluate(config, workdir)
  return workdir, config, final


@pytest.fixture(scope="module")
def tied():
  """(ELECTRA model with tied embeddings, random params): the model tests' default."""
  from model_helpers import _model, _random_params  # pylint: disable=g-import-not-at-top
  model = _model()
  return model, _random_params(model)
