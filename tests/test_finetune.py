"""Fine-tuning: init loading, padded evaluation, a run on ../shared/tasks/austen_book,
results.json and seed reuse, the optimizer's layer-wise lrs, errors and the CLI."""

import collections
import importlib.util
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from electra_jax import finetune
from electra_jax import optim
from electra_jax import task_metrics
from electra_jax import tasks
from electra_jax import train
from electra_jax.config import pretrain_config
from electra_jax.data import vocab as vocab_lib
from electra_jax.errors import UserInputError
from electra_jax.model import (SIZES, ElectraPretrainingModel, EncoderConfig,
                               abstract_params, encoder_config_from,
                               encoder_params_from_pretraining, generator_config)
from electra_jax.tokenization import load_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
AUSTEN_TASK = SHARED / "tasks" / "austen_book"


def _load_config_module():
  spec = importlib.util.spec_from_file_location("finetune_config", REPO / "configs" / "finetune.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


finetune_config = _load_config_module()

needs_shared = pytest.mark.skipif(not AUSTEN_TASK.exists() or not (SHARED / "corpus").exists(),
                                  reason="../shared/tasks and ../shared/corpus are not present")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory):
  """A 1000-piece SentencePiece vocab trained on the start of Austen."""
  if not (SHARED / "corpus").exists():
    pytest.skip("../shared/corpus is not present")
  corpus = tmp_path_factory.mktemp("corpus")
  text = (SHARED / "corpus" / "austen.txt").read_bytes()[:400_000].decode("utf-8", "ignore")
  (corpus / "austen.txt").write_text(text, encoding="utf-8")
  return vocab_lib.train_vocab(str(corpus / "austen.txt"),
                               str(tmp_path_factory.mktemp("vocab") / "spm"), vocab_size=1000)


@pytest.fixture(scope="module")
def pretrain_workdir(vocab_path, tmp_path_factory):
  """A pretraining workdir laid out by train.py's own helpers, holding step-0 weights.

  config.json (check_workdir_config), vocab/ (save_vocab) and an orbax 'state' item
  with TrainState(step, params, opt_state), as train_and_evaluate writes them.  The
  weights are the initial ones: a real tiny pretraining costs ~50 s of compilation and
  data building on the test machine (tests/test_train.py covers that path).
  """
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  config = pretrain_config("tiny")
  config.data.vocab = vocab_path
  tokenizer = load_tokenizer(vocab_path)
  train.check_workdir_config(workdir, config, tokenizer.fingerprint)
  train.save_vocab(workdir, vocab_path)
  disc = encoder_config_from(config.model, tokenizer.vocab_size)
  model = ElectraPretrainingModel(disc, generator_config(disc, config.model.generator_size))
  params = random_params(abstract_params(model), seed=7)
  tx, _ = optim.make_optimizer(config.optim, config.train.steps)
  opt_state = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), jax.eval_shape(tx.init, params))
  state = train.TrainState(step=np.asarray(3, np.int32), params=params, opt_state=opt_state)
  train.save_state(workdir, state)
  return workdir, params


def random_params(abstract, seed: int):
  """Weights drawn like the initializers do, in numpy: N(0, 0.02) matrices and
  embeddings, LayerNorm scales 1, biases 0 (an XLA-compiled init costs ~10 s here)."""
  rng = np.random.default_rng(seed)

  def draw(path, a):
    name = path[-1].key
    if name == "scale":
      return np.ones(a.shape, a.dtype)
    if name in ("bias", "output_bias"):
      return np.zeros(a.shape, a.dtype)
    return (0.02 * rng.standard_normal(a.shape)).astype(a.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def classifier_shapes(model: finetune.SequenceClassifier):
  ids = jnp.zeros((1, 8), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), ids, ids, ids + 1))["params"]


def austen_config(init_dir: str, **overrides):
  c = finetune_config.get_config()
  c.task = "austen_book"
  c.data_dir = str(AUSTEN_TASK)
  c.init = init_dir
  c.max_seq_length = 32
  c.epochs = 1.0
  c.eval_batch_size = 96  # 940 dev / 941 test examples: the last batch is padded
  for k, v in overrides.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def austen_run(tiny_pretrained_run, tmp_path_factory):
  """Two seeds fine-tuned for 2 epochs from conftest's 600-step tiny pretraining.

  Measured: dev accuracy 0.468 and 0.442 (seeds 1, 2) after 2 epochs, ~0.345 after 1;
  majority class 0.240.
  """
  workdir = str(tmp_path_factory.mktemp("austen"))
  config = austen_config(tiny_pretrained_run[0], seeds="1,2", epochs=2.0)
  return workdir, config, finetune.finetune_and_evaluate(config, workdir)


# ----------------------------------------------------------------------------- init


def test_load_init_restores_the_discriminator_of_a_pretraining_workdir(pretrain_workdir,
                                                                      vocab_path):
  workdir, params = pretrain_workdir
  cfg, restored, tokenizer = finetune.load_init(workdir)
  assert tokenizer.fingerprint == load_tokenizer(vocab_path).fingerprint
  assert cfg == EncoderConfig(vocab_size=1000, **SIZES["tiny"])
  want = encoder_params_from_pretraining(params)
  assert jax.tree.structure(restored) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want)):
    assert isinstance(a, np.ndarray)
    np.testing.assert_array_equal(a, np.asarray(b))


def test_init_errors(pretrain_workdir, tmp_path):
  workdir = pretrain_workdir[0]
  with pytest.raises(UserInputError, match="does not exist"):
    finetune.load_init(str(tmp_path / "missing"))
  empty = tmp_path / "no_ckpt"
  shutil.copytree(workdir, empty, ignore=shutil.ignore_patterns("checkpoints"))
  (empty / "checkpoints").mkdir()
  with pytest.raises(UserInputError, match="no checkpoint in"):
    finetune.load_init(str(empty))
  other = tmp_path / "other_vocab"
  shutil.copytree(workdir, other)
  saved = json.loads((other / "config.json").read_text())
  saved["vocab_fingerprint"] = "0123456789abcdef"
  (other / "config.json").write_text(json.dumps(saved))
  with pytest.raises(UserInputError, match="vocab mismatch"):
    finetune.load_init(str(other))
  hf = tmp_path / "hf"
  (hf / "discriminator").mkdir(parents=True)
  with pytest.raises(UserInputError, match="Hugging Face"):
    finetune.load_init(str(hf))
  with pytest.raises(UserInputError, match="not a pretraining workdir"):
    finetune.load_init(str(tmp_path))


@needs_shared
def test_config_errors(pretrain_workdir, tmp_path):
  init = pretrain_workdir[0]
  words = tmp_path / "vocab.txt"
  words.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a"]))
  cases = [
      (dict(vocab=str(words)), "vocab mismatch"),
      (dict(task="nope", data_dir=str(tmp_path)), "train.tsv not found"),
      (dict(task=""), "set --config.task"),
      (dict(init="", vocab="", model_size="tiny"), "random init"),
      (dict(seeds="1,x"), "comma-separated integers"),
      (dict(batch_size=0), "batch_size"),
      (dict(data_dir="tfds"), "GLUE tasks only"),
  ]
  if importlib.util.find_spec("tensorflow") is None:
    cases.append((dict(task="sst2", data_dir="tfds"), "needs TensorFlow"))
  for overrides, message in cases:
    with pytest.raises(UserInputError, match=message):
      finetune.finetune_and_evaluate(austen_config(init, **overrides), str(tmp_path / "w"))


def test_cli_reports_a_missing_init_with_exit_status_2(tmp_path):
  r = subprocess.run(
      [sys.executable, "-m", "electra_jax.finetune", "--config=configs/finetune.py",
       f"--workdir={tmp_path / 'w'}", "--config.task=sst2", f"--config.data_dir={tmp_path}",
       f"--config.init={tmp_path / 'nothing'}"],
      capture_output=True, text=True, cwd=REPO, timeout=120)
  assert r.returncode == 2, r.stderr
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "does not exist" in errors[0]


# ----------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("is_regression", [False, True], ids=["classes", "regression"])
def test_padded_eval_equals_eval_on_all_examples(is_regression):
  cfg = EncoderConfig(vocab_size=60, **SIZES["tiny"])
  num_labels = 1 if is_regression else 3
  model = finetune.SequenceClassifier(cfg, num_labels)
  n, length = 21, 12  # 21 is not a multiple of the batch size 8
  rng = np.random.default_rng(0)
  mask = (np.arange(length)[None] < rng.integers(3, length + 1, (n, 1))).astype(np.int32)
  features = {
      "input_ids": (rng.integers(5, 60, (n, length)) * mask).astype(np.int32),
      "input_mask": mask,
      "segment_ids": np.zeros((n, length), np.int32),
      "labels": (rng.normal(2.5, 1.0, n).astype(np.float32) if is_regression
                 else rng.integers(0, 3, n).astype(np.int32)),
  }
  params = random_params(classifier_shapes(model), seed=1)
  params["classifier"]["bias"] = np.linspace(-1, 1, num_labels).astype(np.float32)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  predict = finetune.make_predict_fn(model, is_regression, mesh, batch_size=8)
  outputs, loss = predict(params, features)

  full = np.asarray(jax.jit(model.apply)({"params": params}, features["input_ids"],
                                         features["segment_ids"], features["input_mask"]))
  assert outputs.shape == (n, num_labels)
  np.testing.assert_allclose(outputs, full, rtol=1e-5, atol=1e-6)
  labels = features["labels"]
  if is_regression:
    want_loss = np.mean((full[:, 0] - labels) ** 2)
  else:
    logp = full - np.log(np.sum(np.exp(full), axis=-1, keepdims=True))
    want_loss = -np.mean(logp[np.arange(n), labels])
  assert loss == pytest.approx(want_loss, rel=1e-5)

  spec = tasks.TaskSpec(name="toy", text_a="a", text_b=None, label="l",
                        label_list=None if is_regression else ("x", "y", "z"),
                        is_regression=is_regression,
                        metrics=("spearman", "pearson") if is_regression
                        else ("accuracy", "mcc"))
  metrics = finetune.evaluate(predict, spec, params, features)
  want = task_metrics.compute(spec.metrics, labels, full[:, 0] if is_regression else full)
  for k, v in want.items():
    assert metrics[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
  assert metrics["loss"] == pytest.approx(want_loss, rel=1e-5)


def test_padded_batches_cover_every_example_once():
  features = {"input_ids": np.arange(10).reshape(10, 1), "labels": np.arange(10)}
  batches = list(finetune.padded_batches(features, 4))
  assert [real for _, real in batches] == [4, 4, 2]
  last = batches[-1][0]
  np.testing.assert_array_equal(last["weights"], [1, 1, 0, 0])
  np.testing.assert_array_equal(last["labels"], [8, 9, 0, 0])


def test_unlabelled_rows_do_not_count():
  losses, labelled = finetune.example_losses(jnp.zeros((3, 2)), jnp.array([0, -1, 1]), False)
  np.testing.assert_allclose(losses, [np.log(2), 0, np.log(2)], rtol=1e-6)
  np.testing.assert_array_equal(labelled, [True, False, True])
  losses, labelled = finetune.example_losses(jnp.ones((2, 1)), jnp.array([3.0, np.nan]), True)
  np.testing.assert_allclose(losses, [4.0, 0.0])
  np.testing.assert_array_equal(labelled, [True, False])


# ----------------------------------------------------------------------------- optimizer


@pytest.mark.parametrize("compat", [False, True], ids=["intended", "original"])
def test_finetune_optimizer_applies_the_layerwise_table(compat):
  cfg = EncoderConfig(vocab_size=50, **SIZES["tiny"])
  model = finetune.SequenceClassifier(cfg, 2)
  params = random_params(classifier_shapes(model), seed=0)
  settings = finetune.Settings(
      task="t", data_dir="", init="", model_size="tiny", num_layers=2, learning_rate=1e-3,
      layerwise_lr_decay=0.8, layerwise_decay_compat=compat, epochs=1.0, batch_size=32,
      train_examples=320, steps=10, warmup_steps=0, max_seq_length=8, weight_decay=0.0,
      clip_norm=0.0, dropout=0.1, attention_dropout=0.1, dtype="float32")
  tx, schedule = finetune.make_optimizer(settings, params)
  assert float(schedule(0)) == pytest.approx(1e-3)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  lr_per_param = jax.tree.map(lambda u: -np.asarray(u) / (0.1 / (np.sqrt(0.001) + 1e-6)),
                              updates)
  table = optim.layerwise_lr_table(params, 2, 0.8, compat)
  top = "electra/discriminator/encoder/layer/attention/self/query/kernel[1]"
  assert table[top] == pytest.approx(0.8 ** 2 if compat else 0.8)
  for path, lr in jax.tree_util.tree_flatten_with_path(lr_per_param)[0]:
    name = "/".join(k.key for k in path)
    if "encoder/layer/" in name:
      for i in range(2):
        np.testing.assert_allclose(lr[i], 1e-3 * table[f"{name}[{i}]"], rtol=1e-5)
    else:
      np.testing.assert_allclose(lr, 1e-3 * table[name], rtol=1e-5)


# ----------------------------------------------------------------------------- end to end


@needs_shared
def test_austen_book_beats_the_majority_class(austen_run):
  _, config, results = austen_run
  spec = tasks.get_task("austen_book", config.data_dir)
  train_labels = [e.label for e in tasks.read_examples(spec, config.data_dir, "train")]
  dev_labels = np.array([e.label for e in tasks.read_examples(spec, config.data_dir, "dev")])
  majority = collections.Counter(train_labels).most_common(1)[0][0]
  majority_acc = float(np.mean(dev_labels == majority))
  print("majority-class dev accuracy", round(majority_acc, 4),
        {s: r["dev"] for s, r in results["per_seed"].items()})
  assert results["main_metric"] == "dev/accuracy"
  assert results["main"]["median"] > majority_acc + 0.1
  for seed_result in results["per_seed"].values():
    assert seed_result["dev"]["accuracy"] > majority_acc + 0.05
    assert seed_result["dev"]["mcc"] > 0.1


@needs_shared
def test_results_json_and_predictions(austen_run):
  workdir, _, results = austen_run
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    assert json.load(f) == json.loads(json.dumps(results))
  assert results["seeds"] == [1, 2]
  assert sorted(results["per_seed"]) == ["1", "2"]
  assert results["examples"] == {"train": 7526, "dev": 940, "test": 941}
  assert results["settings"]["steps"] == 2 * 7526 // 32
  assert results["settings"]["learning_rate"] == finetune.DEFAULT_LEARNING_RATE["tiny"]
  assert results["settings"]["layerwise_lr_decay"] == 0.8
  for split in ("dev", "test"):  # austen_book's test.tsv has labels, so it is scored too
    for metric in ("accuracy", "mcc", "loss"):
      values = [results["per_seed"][s][split][metric] for s in ("1", "2")]
      summary = results["summary"][split][metric]
      assert summary["median"] == pytest.approx(statistics.median(values))
      assert summary["std"] == pytest.approx(statistics.stdev(values))
      assert (summary["min"], summary["max"], summary["n"]) == (min(values), max(values), 2)
  accs = {s: results["per_seed"][s]["dev"]["accuracy"] for s in ("1", "2")}
  assert results["main"]["median"] == pytest.approx(statistics.median(accs.values()))
  assert results["best_seed"] == int(max(accs, key=accs.get))
  assert results["predictions"] == {"seed": results["best_seed"],
                                    "files": ["predictions/test.tsv"]}
  test_ids = [e.guid for e in tasks.read_examples(
      tasks.get_task("austen_book", str(AUSTEN_TASK)), str(AUSTEN_TASK), "test")]
  for seed in (1, 2):
    seed_dir = pathlib.Path(workdir) / f"seed_{seed}"
    assert json.loads((seed_dir / "metrics.json").read_text())["seed"] == seed
    rows = (seed_dir / "predictions" / "test.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction" and [r.split("\t")[0] for r in rows[1:]] == test_ids
  best = pathlib.Path(workdir) / f"seed_{results['best_seed']}" / "predictions" / "test.tsv"
  assert (pathlib.Path(workdir) / "predictions" / "test.tsv").read_text() == best.read_text()
  labels = set(tasks.get_task("austen_book", str(AUSTEN_TASK)).label_list)
  assert {r.split("\t")[1] for r in best.read_text().splitlines()[1:]} <= labels


@needs_shared
def test_rerun_reuses_finished_seeds_and_refuses_changed_settings(austen_run, capsys):
  workdir, config, results = austen_run
  again = finetune.finetune_and_evaluate(config, workdir)
  assert "seed 2: reusing the finished run" in capsys.readouterr().out
  assert again["per_seed"] == results["per_seed"]
  changed = austen_config(config.init, seeds="1,2", epochs=2.0, learning_rate=5e-4)
  with pytest.raises(UserInputError, match="different settings"):
    finetune.finetune_and_evaluate(changed, workdir)


def test_seeds_and_summary():
  assert finetune.parse_seeds("3, 1,2") == [3, 1, 2]
  assert finetune.parse_seeds(5) == [5]
  for bad in ("", "1,1", "-1", "a"):
    with pytest.raises(UserInputError):
      finetune.parse_seeds(bad)
  s = finetune.summarize([0.5, 0.9, 0.7, 0.6])
  assert s == pytest.approx({"median": 0.65, "mean": 0.675, "std": float(np.std(
      [0.5, 0.9, 0.7, 0.6], ddof=1)), "min": 0.5, "max": 0.9, "n": 4})
  assert finetune.summarize([0.3])["std"] == 0.0


@needs_shared
def test_interrupted_seed_resumes_from_its_checkpoint_exactly(pretrain_workdir, tmp_path,
                                                              monkeypatch, capsys):
  """A run killed mid-seed continues from its latest checkpoint and ends with the same
  weights and dev metrics as an uninterrupted run; the final checkpoint holds them."""
  from electra_jax import reporting  # pylint: disable=g-import-not-at-top
  config = austen_config(pretrain_workdir[0], epochs=0.15, log_every=5, checkpoint_every=10)
  steps = int(7526 * 0.15 / 32)
  assert steps == 35
  reference = finetune.finetune_and_evaluate(config, str(tmp_path / "reference"))

  real_write = reporting.MetricWriter.write

  def crash_at_25(self, step, metrics):
    if step == 25:
      raise KeyboardInterrupt("simulated preemption")
    return real_write(self, step, metrics)

  monkeypatch.setattr(reporting.MetricWriter, "write", crash_at_25)
  workdir = tmp_path / "interrupted"
  with pytest.raises(KeyboardInterrupt):
    finetune.finetune_and_evaluate(config, str(workdir))
  assert not (workdir / "seed_1" / "metrics.json").exists()
  assert sorted(os.listdir(workdir / "seed_1" / "checkpoints")) == ["20"]
  monkeypatch.setattr(reporting.MetricWriter, "write", real_write)
  capsys.readouterr()
  resumed = finetune.finetune_and_evaluate(config, str(workdir))
  assert "seed 1: resuming from checkpoint 20" in capsys.readouterr().out
  assert resumed["per_seed"]["1"]["dev"] == reference["per_seed"]["1"]["dev"]

  ckpts = [str(d / "seed_1") for d in (tmp_path / "reference", workdir)]
  assert [sorted(os.listdir(os.path.join(c, "checkpoints"))) for c in ckpts] == [["35"]] * 2
  abstract = jax.eval_shape(
      lambda: finetune.SequenceClassifier(encoder_config_from(SIZES["tiny"], 1000), 6).init(
          jax.random.key(0), *(jnp.zeros((1, 8), jnp.int32),) * 3))["params"]
  finals = [train.restore_params(c, abstract) for c in ckpts]
  assert finals[0][0] == finals[1][0] == 35
  for a, b in zip(jax.tree.leaves(finals[0][1]), jax.tree.leaves(finals[1][1])):
    np.testing.assert_array_equal(a, b)

  # Changed settings never resume someone else's checkpoint.
  (workdir / "seed_1" / "metrics.json").unlink()
  with pytest.raises(UserInputError, match="unfinished run with different settings"):
    finetune.finetune_and_evaluate(
        austen_config(pretrain_workdir[0], epochs=0.15, log_every=5, checkpoint_every=10,
                      learning_rate=5e-4), str(workdir))
