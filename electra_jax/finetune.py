"""Fine-tuning ELECTRA's discriminator on GLUE-style tasks, with dev evaluation.

    python -m electra_jax.finetune --config=configs/finetune.py --workdir=DIR \
        --config.task=sst2 --config.data_dir=glue_data/SST-2 \
        --config.init=PRETRAIN_WORKDIR [--config.seeds=1,2,3,4,5]

`finetune_and_evaluate(config, workdir)` is the whole job, importable for tests.
It reads top to bottom: settings, the task's data, the pretrained encoder
(`load_init`), model and optimizer (layer-wise lr decay, DESIGN.md §3), the
jitted steps, then one run per seed, and the summary over seeds.

The recipe is the paper's (DESIGN.md §3): the head is dropout -> dense on the
final [CLS] hidden state (no pooler); softmax cross-entropy, or one output with
squared error for regression (STS-B); AdamW (the ELECTRA optimizer without bias
correction, gradient clip 1.0) with a linear warmup over the first 10% of the
steps multiplied into a linear decay to 0; layer-wise lr decay.  Steps are
int(train examples * epochs / batch size); the training stream is a fresh
shuffle of the training set for each epoch.

The steps are `jax.jit` over a Mesh whose 'data' axis spans every device: batches
are sharded along it, the state is replicated and donated.  Evaluation pads the
last batch with weight-0 rows, so every example is scored exactly once.

The workdir receives
  results.json             per-seed metrics of every dev split (and of test splits
                           that carry labels), their median/mean/std/min/max over
                           seeds, the main metric and the resolved settings;
  seed_<s>/metrics.json    one seed's metrics (written last: marks the seed done;
                           a rerun with the same settings reuses finished seeds);
  seed_<s>/metrics.jsonl, seed_<s>/tensorboard/   the training curves;
  seed_<s>/settings.json   the resolved settings the seed's run was started with;
  seed_<s>/checkpoints/<step>/   orbax checkpoints of the run (the layout pretraining
                           uses: a 'state' item with step, params, opt_state), every
                           config.checkpoint_every steps and at the end; an
                           interrupted seed resumes from its latest one exactly
                           (the batch order and dropout keys depend only on seed and
                           step); the final one holds the fine-tuned weights unless
                           config.keep_final_checkpoint is False;
  seed_<s>/predictions/    that seed's test predictions (GLUE submission files
                           such as SST-2.tsv / MNLI-m.tsv, or <split>.tsv for
                           other tasks);
  predictions/             a copy of the best seed's (by the main dev metric).
The workdir and config.init may be local or gs://BUCKET/PATH (read and written through
etils.epath, like pretraining's; checkpoints through orbax); a Hugging Face init must
be local.

This module is the entry point (all names above are importable from here); the pieces
behind it:
  finetune_init      `load_init`: the encoder of a pretraining workdir or HF export
  finetune_settings  config checks, `task_spec`, `Settings`, `make_optimizer`
  finetune_model     `SequenceClassifier`, losses, `make_predict_fn`, `evaluate`
  finetune_workdir   seed settings and checkpoints, results.json, `summarize`
"""

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from electra_jax import optim
from electra_jax import tasks
from electra_jax import train
from electra_jax import workdir as workdir_io
from electra_jax.errors import UserInputError
from electra_jax.finetune_init import load_init
from electra_jax.finetune_model import SequenceClassifier
from electra_jax.finetune_model import batch_loss
from electra_jax.finetune_model import device_batch
from electra_jax.finetune_model import evaluate
from electra_jax.finetune_model import example_losses
from electra_jax.finetune_model import make_predict_fn
from electra_jax.finetune_model import padded_batches
from electra_jax.finetune_model import split_metrics
from electra_jax.finetune_settings import DEFAULT_LAYERWISE_DECAY
from electra_jax.finetune_settings import DEFAULT_LEARNING_RATE
from electra_jax.finetune_settings import LONG_TASKS
from electra_jax.finetune_settings import TFDS
from electra_jax.finetune_settings import Settings
from electra_jax.finetune_settings import describe_factors
from electra_jax.finetune_settings import make_optimizer
from electra_jax.finetune_settings import parse_seeds
from electra_jax.finetune_settings import resolve_settings
from electra_jax.finetune_settings import task_spec
from electra_jax.finetune_settings import validate_config
from electra_jax.finetune_workdir import check_seed_settings
from electra_jax.finetune_workdir import checkpoint_manager
from electra_jax.finetune_workdir import read_json
from electra_jax.finetune_workdir import relative_path
from electra_jax.finetune_workdir import remove_tree
from electra_jax.finetune_workdir import restore_state
from electra_jax.finetune_workdir import summarize
from electra_jax.finetune_workdir import write_json
from electra_jax.finetune_workdir import write_results
from electra_jax.model import SIZES, encoder_config_from
from electra_jax.model_config import for_platform
from electra_jax.tokenization import load_tokenizer
from electra_jax.train import TrainState

__all__ = [
    "DEFAULT_LAYERWISE_DECAY", "DEFAULT_LEARNING_RATE", "LONG_TASKS", "TFDS",
    "SequenceClassifier", "Settings", "batch_loss", "evaluate", "example_losses",
    "finetune_and_evaluate", "load_init", "make_optimizer", "make_predict_fn",
    "padded_batches", "parse_seeds", "resolve_settings", "split_metrics", "summarize",
    "task_spec", "validate_config",
]


# ----------------------------------------------------------------------------- data


def _read_split(spec: tasks.TaskSpec, data_dir: str, split: str, tokenizer,
                max_seq_length: int) -> tuple[list[str], dict[str, np.ndarray]]:
  if data_dir == TFDS:
    examples = tasks.read_tfds_examples(spec, split)
  else:
    examples = tasks.read_examples(spec, data_dir, split)
  features = tasks.encode_examples(examples, tokenizer, max_seq_length,
                                   is_regression=spec.is_regression)
  return [e.guid for e in examples], features


def _has_labels(features) -> bool:
  labels = features["labels"]
  return bool(np.all(~np.isnan(labels)) if labels.dtype.kind == "f" else np.all(labels >= 0))


def _train_order(num_examples: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
  """Example indices for all steps: a fresh permutation per epoch, concatenated."""
  rng = np.random.default_rng(seed)
  need = steps * batch_size
  parts = [rng.permutation(num_examples) for _ in range(-(-need // num_examples))]
  return np.concatenate(parts)[:need]


# ----------------------------------------------------------------------------- main


def finetune_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Fine-tunes once per seed in config.seeds and evaluates on every dev split.

  Returns the content of WORKDIR/results.json (see the module docstring).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from electra_jax.reporting import MetricWriter  # pylint: disable=g-import-not-at-top

  # ------------------------------------------------------------------ settings
  validate_config(config)
  seeds = parse_seeds(config.seeds)
  spec = task_spec(config)
  if config.init:
    cfg, pretrained, tokenizer = load_init(config.init)
    if config.vocab:
      wanted = load_tokenizer(config.vocab)
      if wanted.fingerprint != tokenizer.fingerprint:
        raise UserInputError(
            f"vocab mismatch: config.vocab={config.vocab} (fingerprint "
            f"{wanted.fingerprint}) is not the vocab of config.init={config.init} "
            f"({tokenizer.fingerprint}); drop config.vocab to use the init's vocab")
  else:
    if not config.vocab:
      raise UserInputError("random init (config.init='') needs --config.vocab (a "
                           ".model or vocab.txt file); or pass a pretraining workdir as "
                           "--config.init")
    if config.model_size not in SIZES:
      raise UserInputError(f"config.model_size={config.model_size!r} is not one of "
                           f"{', '.join(SIZES)}")
    tokenizer = load_tokenizer(config.vocab)
    cfg = encoder_config_from(SIZES[config.model_size], tokenizer.vocab_size)
    pretrained = None
  cfg = dataclasses.replace(cfg, dropout_rate=config.dropout,
                            attention_dropout_rate=config.attention_dropout,
                            dtype=config.dtype)
  cfg = for_platform(cfg, jax.devices()[0].platform)
  if config.max_seq_length > cfg.max_position_embeddings:
    raise UserInputError(f"config.max_seq_length={config.max_seq_length} exceeds the "
                         f"model's max_position_embeddings {cfg.max_position_embeddings}")

  # ---------------------------------------------------------------------- data
  read = lambda split: _read_split(spec, config.data_dir, split, tokenizer,
                                   config.max_seq_length)
  _, train_data = read("train")
  dev_data = {split: read(split) for split in spec.dev_splits}
  test_data = {}
  for split in spec.test_splits:
    if config.data_dir == TFDS or os.path.isfile(
        os.path.join(config.data_dir, spec.split_file(split))):
      test_data[split] = read(split)
    else:
      print(f"no {spec.split_file(split)} in {config.data_dir}: no {split} predictions",
            flush=True)
  num_train = train_data["input_ids"].shape[0]
  s = resolve_settings(config, spec, cfg, num_train)
  settings = dataclasses.asdict(s)

  workdir = workdir_io.resolve(workdir)  # gs://... stays as it is
  is_main = jax.process_index() == 0  # only process 0 writes files
  train.check_workdir_writable(workdir)  # creates it (process 0)
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))

  # ------------------------------------------------- model and optimizer
  model = SequenceClassifier(cfg, spec.num_labels, head_dropout=config.dropout)
  seq_len = config.max_seq_length
  ids = jnp.zeros((1, seq_len), jnp.int32)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, ids, ids + 1))
  tx, schedule = make_optimizer(s, abstract["params"])

  def init_state(key, encoder_params):
    params = model.init({"params": key}, ids, ids, ids + 1)["params"]
    if encoder_params is not None:
      params = {**params, "electra": encoder_params}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params))

  abstract_state = jax.eval_shape(init_state, jax.random.key(0), pretrained)
  state_sharding = jax.tree.map(lambda _: replicated, abstract_state)
  init_state = jax.jit(init_state, out_shardings=state_sharding)
  if pretrained is not None:
    pretrained = jax.device_put(pretrained, replicated)

  # ---------------------------------------------------------------- steps
  def train_step(state: TrainState, batch, key):
    key = jax.random.fold_in(key, state.step)
    (loss, _), grads = jax.value_and_grad(batch_loss, has_aux=True)(
        state.params, batch, model=model, is_regression=spec.is_regression, key=key)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "learning_rate": schedule(state.step)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  train_step = jax.jit(train_step, in_shardings=(state_sharding, batch_sharding, replicated),
                       out_shardings=(state_sharding, replicated), donate_argnums=(0,))
  predict = make_predict_fn(model, spec.is_regression, mesh, config.eval_batch_size)

  # ------------------------------------------------------------- summary
  print(f"fine-tuning {spec.name}: {num_train} train examples, {s.steps} steps "
        f"({s.epochs:g} epochs x batch {s.batch_size}), lr {s.learning_rate:g} "
        f"(warmup {s.warmup_steps}), layer-wise decay {s.layerwise_lr_decay:g}"
        f"{' (original off-by-one)' if s.layerwise_decay_compat else ''} over "
        f"{s.num_layers} layers, model {s.model_size}, "
        f"{'init ' + s.init if s.init else 'random init'}; seeds {seeds}; "
        f"{jax.device_count()} device(s) ({jax.devices()[0].platform})", flush=True)
  print("layer-wise lr multipliers: " + describe_factors(
      optim.layerwise_lr_table(abstract["params"], s.num_layers, s.layerwise_lr_decay,
                               s.layerwise_decay_compat)), flush=True)

  # ---------------------------------------------------------------- seeds
  per_seed: dict[str, dict] = {}
  for seed in seeds:
    seed_dir = os.path.join(workdir, f"seed_{seed}")
    done_path = os.path.join(seed_dir, "metrics.json")
    if epath.Path(done_path).exists():
      done = read_json(done_path)
      if done.get("settings") != json.loads(json.dumps(settings)):
        raise UserInputError(
            f"{seed_dir} holds a finished run with different settings; use a new "
            f"--workdir (or delete {seed_dir})")
      print(f"seed {seed}: reusing the finished run in {seed_dir}", flush=True)
      per_seed[str(seed)] = done
      continue
    if is_main:
      epath.Path(seed_dir).mkdir(parents=True, exist_ok=True)
    check_seed_settings(seed_dir, settings, is_main)
    manager = checkpoint_manager(seed_dir)
    try:  # closing the manager completes a save in flight, also on an error
      t0 = time.perf_counter()
      init_key, dropout_key = jax.random.split(jax.random.key(seed))
      start = manager.latest_step()
      if start is None:
        state, start = init_state(init_key, pretrained), 0
      else:  # an interrupted run: continue exactly where its last checkpoint left off
        state = restore_state(manager, start, abstract_state, state_sharding, seed_dir)
        print(f"seed {seed}: resuming from checkpoint {start} in {seed_dir}", flush=True)
      order = _train_order(num_train, s.steps, s.batch_size, seed)
      writer = MetricWriter(seed_dir, s.steps, "off", initial_step=start)
      pending, last_log = [], {}
      for step in range(start, s.steps):
        rows = order[step * s.batch_size:(step + 1) * s.batch_size]
        batch = {k: v[rows] for k, v in train_data.items()}
        batch["weights"] = np.ones((s.batch_size,), np.float32)
        state, metrics = train_step(state, device_batch(batch, batch_sharding), dropout_key)
        pending.append(metrics)
        if (step + 1) % config.log_every == 0 or step + 1 == s.steps:
          fetched = jax.device_get(pending)
          loss = float(np.mean([m["loss"] for m in fetched]))
          if not np.isfinite(loss):
            raise FloatingPointError(f"seed {seed}: training loss became {loss} by step "
                                     f"{step + 1}; lower config.learning_rate")
          last_log = {"train/loss": loss,
                      "train/learning_rate": float(fetched[-1]["learning_rate"])}
          if step + 1 < s.steps:  # the last one is written with the dev metrics
            writer.write(step + 1, last_log)
          pending = []
        if ((config.checkpoint_every and (step + 1) % config.checkpoint_every == 0)
            or step + 1 == s.steps):
          manager.save(step + 1, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
      manager.wait_until_finished()
    finally:
      manager.close()
    train_s = time.perf_counter() - t0

    result = {"seed": seed, "train_seconds": round(train_s, 2)}
    for split, (_, features) in dev_data.items():
      result[split] = evaluate(predict, spec, state.params, features)
    writer.write(s.steps, {**last_log, **{f"eval/{split}/{k}": v for split in dev_data
                                          for k, v in result[split].items()}})
    files = []
    pred_dir = os.path.join(seed_dir, "predictions")
    for split, (guids, features) in test_data.items():
      if not (config.write_test_predictions or _has_labels(features)):
        continue
      outputs, loss = predict(state.params, features)  # every process takes part
      if _has_labels(features):  # e.g. ../shared/tasks: score the test split too
        result[split] = split_metrics(spec, features["labels"], outputs, loss)
      if config.write_test_predictions and is_main:
        if spec.submission_files:
          files.append(tasks.write_glue_predictions(spec, guids, outputs, pred_dir, split))
        else:
          files.append(tasks.write_predictions(spec, guids, outputs,
                                               os.path.join(pred_dir, f"{split}.tsv")))
    result["predictions"] = [relative_path(f, seed_dir) for f in files]
    result["settings"] = settings
    writer.close()
    if is_main:
      write_json(done_path, result)
      if not config.keep_final_checkpoint:
        remove_tree(workdir_io.checkpoint_dir(seed_dir))
    per_seed[str(seed)] = result
    print(f"seed {seed}: " + "; ".join(
        f"{split} " + " ".join(f"{k}={v:.4f}" for k, v in result[split].items())
        for split in list(dev_data) + list(test_data) if split in result)
        + f" ({train_s:.0f}s)", flush=True)

  # ------------------------------------------------------------- results
  counts = {"train": num_train}
  for split, (guids, _) in {**dev_data, **test_data}.items():
    counts[split] = len(guids)
  return write_results(workdir, spec, seeds, per_seed, settings, counts, is_main)


if __name__ == "__main__":
  from electra_jax import cli  # pylint: disable=g-import-not-at-top
  _CONFIG, _WORKDIR = cli.define_config_flags()

  def _main(argv):
    del argv
    finetune_and_evaluate(_CONFIG.value, _WORKDIR.value)  # results are in the workdir

  cli.run(_main, huge_pages=True)
