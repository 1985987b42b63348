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
"""

import dataclasses
import json
import os
import shutil
import statistics
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from electra_jax import optim
from electra_jax import task_metrics
from electra_jax import tasks
from electra_jax import train
from electra_jax import workdir as workdir_io
from electra_jax.errors import UserInputError
from electra_jax.model import (SIZES, ElectraEncoder, EncoderConfig, encoder_config_from,
                               encoder_params_from_pretraining, encoder_restore_target)
from electra_jax.tokenization import Tokenizer, load_tokenizer
from electra_jax.train import TrainState

# Per model size: peak learning rate and layer-wise decay (DESIGN.md §3).  'tiny' is
# not in the paper; its lr was picked on ../shared/tasks.
DEFAULT_LEARNING_RATE = {"tiny": 1e-3, "small": 3e-4, "base": 1e-4, "large": 5e-5}
DEFAULT_LAYERWISE_DECAY = {"tiny": 0.8, "small": 0.8, "base": 0.8, "large": 0.9}
# Tasks trained for 10 epochs instead of 3 (small datasets).
LONG_TASKS = ("rte", "stsb")
# config.data_dir value that reads GLUE from tensorflow-datasets (needs TensorFlow).
TFDS = "tfds"


# ----------------------------------------------------------------------------- model


class SequenceClassifier(nn.Module):
  """ElectraEncoder + dropout -> dense(num_labels) on the final [CLS] hidden state.

  Params: {'electra': ElectraEncoder params, 'classifier': {kernel, bias}}.  The
  classifier runs in float32; its kernel is Glorot-uniform as in the original
  (`tf.layers.dense`).  Regression tasks use num_labels=1.
  """
  cfg: EncoderConfig
  num_labels: int
  head_dropout: float = 0.1

  @nn.compact
  def __call__(self, input_ids, segment_ids, input_mask, *,
               deterministic: bool = True) -> jnp.ndarray:
    """-> logits [B, num_labels] float32."""
    hidden = ElectraEncoder(self.cfg, name="electra")(
        input_ids, segment_ids, input_mask, deterministic=deterministic)
    cls = hidden[:, 0].astype(jnp.float32)
    cls = nn.Dropout(self.head_dropout)(cls, deterministic=deterministic)
    return nn.Dense(self.num_labels, dtype=jnp.float32, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.xavier_uniform(),
                    bias_init=nn.initializers.zeros, name="classifier")(cls)


def example_losses(outputs: jnp.ndarray, labels: jnp.ndarray, is_regression: bool
                   ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(per-example loss [B], labelled [B] bool): softmax CE, or squared error.

  Unlabelled rows (class -1, or NaN targets) get loss 0 and labelled=False.
  """
  if is_regression:
    labelled = ~jnp.isnan(labels)
    err = outputs[:, 0] - jnp.where(labelled, labels, 0.0)
    return jnp.where(labelled, jnp.square(err), 0.0), labelled
  labelled = labels >= 0
  logp = jax.nn.log_softmax(outputs, axis=-1)
  safe = jnp.where(labelled, labels, 0)
  nll = -jnp.take_along_axis(logp, safe[:, None], axis=-1)[:, 0]
  return jnp.where(labelled, nll, 0.0), labelled


# ----------------------------------------------------------------------------- init


def _read_json(path: str) -> dict:
  try:
    return json.loads(epath.Path(path).read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise UserInputError(f"cannot read {path} ({e}); delete that seed's directory to rerun "
                         f"it") from e


def _is_pretraining_workdir(path: str) -> bool:
  return ((epath.Path(path) / "config.json").is_file()
          and epath.Path(workdir_io.checkpoint_dir(path)).is_dir())


def _is_hf_export(path: str) -> bool:
  p = epath.Path(path)
  return ((p / "discriminator").is_dir() or (p / "model.safetensors").is_file()
          or (p / "pytorch_model.bin").is_file())


def load_init(init_path: str) -> tuple[EncoderConfig, dict[str, Any], Tokenizer]:
  """Loads a pretrained encoder: (encoder config, ElectraEncoder params, tokenizer).

  Accepted layouts:
    * a pretraining workdir (`electra_jax.train`): config.json (model shape and
      vocab fingerprint), vocab/<vocab file>, checkpoints/<step>/ -- the latest
      checkpoint's discriminator (embeddings + encoder) is restored as numpy arrays
      on the host, without reading the generator or the optimizer state.
    * a Hugging Face directory (an `electra_jax.hf export` root holding
      discriminator/, or a model dir with config.json and model.safetensors), read by
      `electra_jax.hf.load_encoder`.
  INIT_PATH may be local or a URL (gs://bucket/run), read through etils.epath; a Hugging
  Face directory must be local.  Any other layout is a UserInputError.
  """
  path = workdir_io.resolve(init_path)
  if not epath.Path(path).exists():
    raise UserInputError(f"config.init={init_path} does not exist; pass a pretraining "
                         f"workdir, or '' for random init")
  if not epath.Path(path).is_dir():
    raise UserInputError(f"config.init={init_path} is a file; pass a pretraining workdir "
                         f"(with config.json, vocab/ and checkpoints/)")
  if _is_pretraining_workdir(path):
    return _load_pretraining_workdir(path)
  if _is_hf_export(path):
    from electra_jax import hf  # pylint: disable=g-import-not-at-top
    return hf.load_encoder(path)
  raise UserInputError(
      f"config.init={init_path} is not a pretraining workdir (expected config.json, "
      f"vocab/ and checkpoints/<step>/ from electra_jax.train)")


def _load_pretraining_workdir(path: str):
  saved, tokenizer = train.read_workdir_config(path)
  # The pretraining run's remat and dtype say how it computed, not what the model is:
  # fine-tuning makes its own choices (EncoderConfig's defaults, config.dtype).
  model = {k: v for k, v in saved["model"].items() if k not in ("remat", "dtype")}
  cfg = encoder_config_from(model, tokenizer.vocab_size)
  sharing = saved["model"].get("embedding_sharing", "tied")
  step, params = train.restore_params(path, encoder_restore_target(cfg, sharing))
  params = encoder_params_from_pretraining(params)  # folds a gdes embedding delta in
  print(f"init: {path} checkpoint {step} (discriminator {cfg.num_layers} layers, "
        f"hidden {cfg.hidden_size}, vocab {tokenizer.vocab_size})", flush=True)
  return cfg, params, tokenizer


def _size_name(cfg: EncoderConfig) -> str | None:
  for name, shape in SIZES.items():
    if all(getattr(cfg, k) == v for k, v in shape.items()):
      return name
  return None


# ----------------------------------------------------------------------------- settings


def parse_seeds(seeds: str | int) -> list[int]:
  """'1,2,3' -> [1, 2, 3] (distinct non-negative integers, order kept)."""
  parts = [p.strip() for p in str(seeds).split(",") if p.strip()]
  try:
    values = [int(p) for p in parts]
  except ValueError:
    raise UserInputError(f"config.seeds={seeds!r} must be comma-separated integers, "
                         f"e.g. '1,2,3'") from None
  if not values or any(v < 0 for v in values) or len(set(values)) != len(values):
    raise UserInputError(f"config.seeds={seeds!r} must list distinct non-negative "
                         f"integers, e.g. '1,2,3'")
  return values


def _column(value: str):
  value = str(value).strip()
  if not value:
    return None
  return int(value) if value.isdigit() else value


def task_spec(config) -> tasks.TaskSpec:
  """The TaskSpec of config.task (GLUE, or a generic TSV task with config.tsv columns)."""
  if not config.task:
    raise UserInputError("set --config.task (a GLUE task such as sst2, or a name for the "
                         "TSV task in --config.data_dir)")
  if not config.data_dir:
    raise UserInputError("set --config.data_dir to the directory with the task's "
                         "train.tsv and dev.tsv (or 'tfds' for tensorflow-datasets GLUE)")
  if config.data_dir == TFDS:
    if tasks.glue_task_name(config.task) is None:
      raise UserInputError(f"config.data_dir=tfds reads GLUE tasks only; {config.task!r} is "
                           f"not one of {', '.join(tasks.GLUE_TASKS)}")
    return tasks.get_task(config.task)
  if not os.path.isdir(config.data_dir):
    raise UserInputError(f"config.data_dir={config.data_dir} is not a directory")
  t = config.tsv
  tsv_args = {}
  if _column(t.text_a) is not None:
    tsv_args.update(text_a=_column(t.text_a), text_b=_column(t.text_b),
                    label=_column(t.label))
  if t.regression:
    tsv_args["is_regression"] = True
  if not t.has_header:
    tsv_args["has_header"] = False
  return tasks.get_task(config.task, config.data_dir, **tsv_args)


@dataclasses.dataclass(frozen=True)
class Settings:
  """The resolved hyperparameters of a run (config defaults filled in)."""
  task: str
  data_dir: str
  init: str
  model_size: str
  num_layers: int
  learning_rate: float
  layerwise_lr_decay: float
  layerwise_decay_compat: bool
  epochs: float
  batch_size: int
  train_examples: int
  steps: int
  warmup_steps: int
  max_seq_length: int
  weight_decay: float
  clip_norm: float
  dropout: float
  attention_dropout: float
  dtype: str


def validate_config(config) -> None:
  """Checks the values a run needs before any data is read; UserInputError with the fix."""
  n = jax.device_count()
  for name in ("batch_size", "eval_batch_size"):
    value = config[name]
    if value <= 0 or value % n:
      raise UserInputError(
          f"config.{name}={value} must be a positive multiple of the {n} devices, e.g. "
          f"--config.{name}={max(n, value // n * n)}")
  for name in ("learning_rate", "epochs", "weight_decay", "clip_norm"):
    if config[name] < 0:
      raise UserInputError(f"config.{name} must be >= 0, got {config[name]}")
  if not 0 <= config.warmup_fraction <= 1:
    raise UserInputError(f"config.warmup_fraction must be in [0, 1], got "
                         f"{config.warmup_fraction}")
  if config.layerwise_lr_decay > 1:
    raise UserInputError(f"config.layerwise_lr_decay must be <= 1 (0 or 1 = off, -1 = "
                         f"default), got {config.layerwise_lr_decay}")
  if config.log_every <= 0:
    raise UserInputError(f"config.log_every must be positive, got {config.log_every}")
  if config.checkpoint_every < 0:
    raise UserInputError(f"config.checkpoint_every must be >= 0 (0 = only at the end), got "
                         f"{config.checkpoint_every}")


def resolve_settings(config, spec: tasks.TaskSpec, cfg: EncoderConfig,
                     train_examples: int) -> Settings:
  """Fills in the per-size and per-task defaults (see configs/finetune.py)."""
  size = _size_name(cfg)
  key = size or "base"
  lr = config.learning_rate or DEFAULT_LEARNING_RATE[key]
  decay = config.layerwise_lr_decay
  if decay < 0:
    decay = DEFAULT_LAYERWISE_DECAY[key]
  epochs = config.epochs or (10.0 if tasks.glue_task_name(spec.name) in LONG_TASKS
                             else 3.0)
  steps = max(1, int(train_examples * epochs / config.batch_size))
  return Settings(
      task=spec.name,
      data_dir=(config.data_dir if config.data_dir == TFDS
                else os.path.abspath(config.data_dir)),
      init=_init_setting(config.init),
      model_size=size or "custom", num_layers=cfg.num_layers, learning_rate=float(lr),
      layerwise_lr_decay=float(decay),
      layerwise_decay_compat=bool(config.layerwise_decay_compat), epochs=float(epochs),
      batch_size=config.batch_size, train_examples=train_examples, steps=steps,
      warmup_steps=int(steps * config.warmup_fraction),
      max_seq_length=config.max_seq_length, weight_decay=float(config.weight_decay),
      clip_norm=float(config.clip_norm), dropout=float(config.dropout),
      attention_dropout=float(config.attention_dropout), dtype=config.dtype)


def _init_setting(init: str) -> str:
  """config.init as results.json records it: absolute when local, a URL as given."""
  if not init:
    return ""
  return workdir_io.resolve(init) if workdir_io.is_remote(init) else os.path.abspath(init)


def make_optimizer(s: Settings, params) -> tuple[optax.GradientTransformation,
                                                 optax.Schedule]:
  """(optimizer, schedule): clip -> Adam (no bias correction) -> weight decay ->
  layer-wise lr factors -> schedule (warmup x linear decay to 0)."""
  schedule = optim.learning_rate_schedule(s.learning_rate, s.steps, s.warmup_steps)
  parts = []
  if s.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(s.clip_norm))
  parts.append(optim.scale_by_adam_without_bias_correction(0.9, 0.999, 1e-6))
  if s.weight_decay > 0:
    parts.append(optax.add_decayed_weights(s.weight_decay, mask=optim.weight_decay_mask))
  parts.append(optim.scale_by_factors(optim.layerwise_lr_factors(
      params, s.num_layers, s.layerwise_lr_decay, s.layerwise_decay_compat)))
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts), schedule


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


def _process_rows(array: np.ndarray) -> np.ndarray:
  """This process's share of a global batch (all of it on a single host)."""
  n = jax.process_count()
  if n == 1:
    return array
  per = array.shape[0] // n
  i = jax.process_index()
  return array[i * per:(i + 1) * per]


def _device_batch(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, _process_rows(v))
          for k, v in batch.items()}


def padded_batches(features: dict[str, np.ndarray], batch_size: int):
  """Yields (batch, num_real): fixed-size batches; the last is padded with weight-0 rows."""
  n = features["input_ids"].shape[0]
  for start in range(0, n, batch_size):
    batch = {k: v[start:start + batch_size] for k, v in features.items()}
    real = batch["input_ids"].shape[0]
    batch["weights"] = np.ones((real,), np.float32)
    if real < batch_size:
      batch = {k: np.concatenate([v, np.zeros((batch_size - real,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch, real


def _train_order(num_examples: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
  """Example indices for all steps: a fresh permutation per epoch, concatenated."""
  rng = np.random.default_rng(seed)
  need = steps * batch_size
  parts = [rng.permutation(num_examples) for _ in range(-(-need // num_examples))]
  return np.concatenate(parts)[:need]


# ----------------------------------------------------------------------------- steps


def batch_loss(params, batch, *, model: SequenceClassifier, is_regression: bool,
               key=None):
  """Weighted mean loss of a batch and (outputs, loss sum, weight sum).

  Rows count with batch['weights'] (0 for padding) times whether they carry a label.
  `key` None runs deterministically (no dropout).
  """
  deterministic = key is None
  outputs = model.apply({"params": params}, batch["input_ids"], batch["segment_ids"],
                        batch["input_mask"], deterministic=deterministic,
                        rngs=None if deterministic else {"dropout": key})
  losses, labelled = example_losses(outputs, batch["labels"], is_regression)
  weights = batch["weights"] * labelled
  loss_sum, weight_sum = jnp.sum(losses * weights), jnp.sum(weights)
  return loss_sum / jnp.maximum(weight_sum, 1.0), (outputs, loss_sum, weight_sum)


def make_predict_fn(model: SequenceClassifier, is_regression: bool, mesh: Mesh,
                    batch_size: int):
  """predict(params, features) -> (outputs [N, num_labels], mean loss of labelled rows).

  Runs a jitted step over `batch_size` rows at a time, sharded along the mesh's
  'data' axis; the last batch is padded with weight-0 rows, so all N examples are
  scored once and the padding changes neither the outputs nor the loss.
  """
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))

  def step(params, batch):
    _, aux = batch_loss(params, batch, model=model, is_regression=is_regression)
    return aux

  # params keep their own (replicated) sharding; outputs come back replicated.
  step = jax.jit(step, in_shardings=(None, batch_sharding), out_shardings=replicated)

  def predict(params, features) -> tuple[np.ndarray, float]:
    results, reals = [], []
    for batch, real in padded_batches(features, batch_size):
      results.append(step(params, _device_batch(batch, batch_sharding)))  # asynchronous
      reals.append(real)
    results = jax.device_get(results)  # one wait for all batches
    outputs = np.concatenate([np.asarray(out)[:real]
                              for (out, _, _), real in zip(results, reals)])
    loss_sum = sum(float(ls) for _, ls, _ in results)
    weight_sum = sum(float(ws) for _, _, ws in results)
    return outputs, loss_sum / max(weight_sum, 1.0)

  return predict


def split_metrics(spec: tasks.TaskSpec, labels: np.ndarray, outputs: np.ndarray,
                  loss: float) -> dict[str, float]:
  """The task's metrics of model outputs [N, num_labels] against labels [N], and 'loss'."""
  preds = outputs[:, 0] if spec.is_regression else outputs
  metrics = task_metrics.compute(spec.metrics, labels, preds)
  metrics["loss"] = float(loss)
  return metrics


def evaluate(predict, spec: tasks.TaskSpec, params, features) -> dict[str, float]:
  """The task's metrics (and 'loss') of `params` on a labelled split's features."""
  outputs, loss = predict(params, features)
  return split_metrics(spec, features["labels"], outputs, loss)


# ----------------------------------------------------------------------------- results


def _describe_factors(table: dict[str, float]) -> str:
  """'embeddings 0.512, layer_0 0.64, layer_1 0.8, head 1' from a layerwise_lr_table."""
  groups: dict[str, float] = {}
  for name, factor in table.items():
    if "/embeddings" in f"/{name}" or "embeddings_project" in name:
      key = "embeddings"
    elif "/encoder/layer/" in name:
      key = "layer_" + name.rsplit("[", 1)[1].rstrip("]")
    elif "/encoder/layer_" in name:
      key = name.split("/encoder/")[1].split("/")[0]
    else:
      key = "head"
    groups[key] = factor
  order = sorted(groups, key=lambda k: (k != "embeddings", k == "head",
                                        int(k[6:]) if k.startswith("layer_") else 0))
  return ", ".join(f"{k} {groups[k]:.4g}" for k in order)



def summarize(values: list[float]) -> dict[str, float]:
  """median, mean, std (sample, ddof=1; 0 for one seed), min, max and n of `values`."""
  arr = np.asarray(values, np.float64)
  return {"median": float(statistics.median(values)), "mean": float(arr.mean()),
          "std": float(arr.std(ddof=1)) if len(values) > 1 else 0.0,
          "min": float(arr.min()), "max": float(arr.max()), "n": len(values)}


def _write_json(path: str, data) -> None:
  workdir_io.write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _relative(path: str, start: str) -> str:
  """PATH relative to its ancestor START (local paths or URLs)."""
  return os.fspath(epath.Path(path).relative_to(epath.Path(start)))


def _remove_tree(path: str) -> None:
  """Removes directory PATH and its contents, if it exists (local or on an object store)."""
  if not workdir_io.is_remote(path):
    shutil.rmtree(path, ignore_errors=True)
  elif epath.Path(path).exists():
    epath.Path(path).rmtree()


def _replace_dir(src: str, dest: str) -> None:
  """Copies directory `src` to `dest`: locally atomically (built beside it, then renamed);
  on an object store, which cannot rename a directory, file by file (each whole)."""
  if workdir_io.is_remote(dest):
    _replace_remote_dir(src, dest)
    return
  tmp = f"{dest}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.copytree(src, tmp)
  old = f"{dest}.old-{os.getpid()}"
  if os.path.exists(dest):
    os.replace(dest, old)
  os.replace(tmp, dest)
  shutil.rmtree(old, ignore_errors=True)


def _replace_remote_dir(src: str, dest: str) -> None:
  """Copies the files directly in `src` to `dest` and removes `dest`'s other files."""
  names = sorted(f.name for f in epath.Path(src).iterdir())
  for name in names:
    workdir_io.copy_atomic(epath.Path(src) / name, epath.Path(dest) / name)
  if epath.Path(dest).is_dir():
    for old in epath.Path(dest).iterdir():
      if old.name not in names:
        old.unlink()


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
  print("layer-wise lr multipliers: " + _describe_factors(
      optim.layerwise_lr_table(abstract["params"], s.num_layers, s.layerwise_lr_decay,
                               s.layerwise_decay_compat)), flush=True)

  # ---------------------------------------------------------------- seeds
  per_seed: dict[str, dict] = {}
  for seed in seeds:
    seed_dir = os.path.join(workdir, f"seed_{seed}")
    done_path = os.path.join(seed_dir, "metrics.json")
    if epath.Path(done_path).exists():
      done = _read_json(done_path)
      if done.get("settings") != json.loads(json.dumps(settings)):
        raise UserInputError(
            f"{seed_dir} holds a finished run with different settings; use a new "
            f"--workdir (or delete {seed_dir})")
      print(f"seed {seed}: reusing the finished run in {seed_dir}", flush=True)
      per_seed[str(seed)] = done
      continue
    if is_main:
      epath.Path(seed_dir).mkdir(parents=True, exist_ok=True)
    _check_seed_settings(seed_dir, settings, is_main)
    manager = _checkpoint_manager(seed_dir)
    try:  # closing the manager completes a save in flight, also on an error
      t0 = time.perf_counter()
      init_key, dropout_key = jax.random.split(jax.random.key(seed))
      start = manager.latest_step()
      if start is None:
        state, start = init_state(init_key, pretrained), 0
      else:  # an interrupted run: continue exactly where its last checkpoint left off
        state = _restore_state(manager, start, abstract_state, state_sharding, seed_dir)
        print(f"seed {seed}: resuming from checkpoint {start} in {seed_dir}", flush=True)
      order = _train_order(num_train, s.steps, s.batch_size, seed)
      writer = MetricWriter(seed_dir, s.steps, "off", initial_step=start)
      pending, last_log = [], {}
      for step in range(start, s.steps):
        rows = order[step * s.batch_size:(step + 1) * s.batch_size]
        batch = {k: v[rows] for k, v in train_data.items()}
        batch["weights"] = np.ones((s.batch_size,), np.float32)
        state, metrics = train_step(state, _device_batch(batch, batch_sharding), dropout_key)
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
    result["predictions"] = [_relative(f, seed_dir) for f in files]
    result["settings"] = settings
    writer.close()
    if is_main:
      _write_json(done_path, result)
      if not config.keep_final_checkpoint:
        _remove_tree(workdir_io.checkpoint_dir(seed_dir))
    per_seed[str(seed)] = result
    print(f"seed {seed}: " + "; ".join(
        f"{split} " + " ".join(f"{k}={v:.4f}" for k, v in result[split].items())
        for split in list(dev_data) + list(test_data) if split in result)
        + f" ({train_s:.0f}s)", flush=True)

  # ------------------------------------------------------------- results
  counts = {"train": num_train}
  for split, (guids, _) in {**dev_data, **test_data}.items():
    counts[split] = len(guids)
  return _write_results(workdir, spec, seeds, per_seed, settings, counts, is_main)


def _check_seed_settings(seed_dir: str, settings: dict, is_main: bool) -> None:
  """Records the settings a seed's run starts with; refuses to resume under others."""
  path = os.path.join(seed_dir, "settings.json")
  if epath.Path(path).exists():
    if _read_json(path) != json.loads(json.dumps(settings)):
      raise UserInputError(
          f"{seed_dir} holds an unfinished run with different settings; use a new "
          f"--workdir (or delete {seed_dir})")
  elif is_main:
    # A seed dir without settings.json (an old layout) cannot be resumed safely.
    _remove_tree(workdir_io.checkpoint_dir(seed_dir))
    _write_json(path, settings)


def _checkpoint_manager(seed_dir: str):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp.CheckpointManager(
      workdir_io.checkpoint_dir(seed_dir),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=True),
      item_handlers={"state": ocp.StandardCheckpointHandler()})


def _restore_state(manager, step: int, abstract_state, state_sharding, seed_dir: str):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  target = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                        abstract_state, state_sharding)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
  except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
    raise UserInputError(
        f"checkpoint {step} in {seed_dir}/checkpoints does not fit this run "
        f"({str(e).splitlines()[0][:200]}); delete {seed_dir} to start the seed over") from e
  return restored["state"]


def _write_results(workdir, spec, seeds, per_seed, settings, counts, is_main) -> dict:
  """Summarises the seeds, copies the best seed's predictions, writes results.json."""
  main_split = spec.dev_splits[0]
  main_values = [per_seed[str(sd)][main_split][spec.main_metric] for sd in seeds]
  best_seed = seeds[int(np.argmax(main_values))]
  summary = {}
  for split in list(spec.dev_splits) + list(spec.test_splits):
    if all(split in per_seed[str(sd)] for sd in seeds):
      names = per_seed[str(seeds[0])][split].keys()
      summary[split] = {k: summarize([per_seed[str(sd)][split][k] for sd in seeds])
                        for k in names}
  best = per_seed[str(best_seed)]
  predictions = {"seed": best_seed, "files": []}
  if best.get("predictions") and is_main:
    src = os.path.join(workdir, f"seed_{best_seed}", "predictions")
    _replace_dir(src, os.path.join(workdir, "predictions"))
    predictions["files"] = list(best["predictions"])  # relative to the workdir too
  results = {
      "task": spec.name,
      "main_metric": f"{main_split}/{spec.main_metric}",
      "main": summarize(main_values),
      "seeds": seeds,
      "best_seed": best_seed,
      "summary": summary,
      "per_seed": {str(sd): {k: v for k, v in per_seed[str(sd)].items()
                             if k not in ("settings", "predictions")} for sd in seeds},
      "predictions": predictions,
      "examples": counts,
      "settings": settings,
  }
  if is_main:
    _write_json(os.path.join(workdir, "results.json"), results)
  m = results["main"]
  print(f"{spec.name} {results['main_metric']} over {len(seeds)} seed(s): median "
        f"{m['median']:.4f} (min {m['min']:.4f}, max {m['max']:.4f}, std {m['std']:.4f}); "
        f"results in {os.path.join(workdir, 'results.json')}", flush=True)
  return results


if __name__ == "__main__":
  from electra_jax import cli  # pylint: disable=g-import-not-at-top
  _CONFIG, _WORKDIR = cli.define_config_flags()

  def _main(argv):
    del argv
    finetune_and_evaluate(_CONFIG.value, _WORKDIR.value)  # results are in the workdir

  cli.run(_main, huge_pages=True)
