"""A fine-tuning run's settings: config validation, the task, the resolved
hyperparameters (per-size and per-task defaults, DESIGN.md §3) and the optimizer."""

import dataclasses
import os

import jax
import optax

from electra_jax import optim
from electra_jax import tasks
from electra_jax import workdir as workdir_io
from electra_jax.errors import UserInputError
from electra_jax.model import SIZES, EncoderConfig

# Per model size: peak learning rate and layer-wise decay (DESIGN.md §3).  'tiny' is
# not in the paper; its lr was picked on ../shared/tasks.
DEFAULT_LEARNING_RATE = {"tiny": 1e-3, "small": 3e-4, "base": 1e-4, "large": 5e-5}
DEFAULT_LAYERWISE_DECAY = {"tiny": 0.8, "small": 0.8, "base": 0.8, "large": 0.9}
# Tasks trained for 10 epochs instead of 3 (small datasets).
LONG_TASKS = ("rte", "stsb")
# config.data_dir value that reads GLUE from tensorflow-datasets (needs TensorFlow).
TFDS = "tfds"


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
  layer-wise lr factors -> schedule (warmup x linear decay to 0), as one
  `optim.electra_adamw` pass."""
  schedule = optim.learning_rate_schedule(s.learning_rate, s.steps, s.warmup_steps)
  factors = optim.layerwise_lr_factors(params, s.num_layers, s.layerwise_lr_decay,
                                       s.layerwise_decay_compat)
  tx = optim.electra_adamw(schedule, b1=0.9, b2=0.999, eps=1e-6,
                           weight_decay=s.weight_decay, clip_norm=s.clip_norm,
                           factors=factors)
  return tx, schedule


def _size_name(cfg: EncoderConfig) -> str | None:
  for name, shape in SIZES.items():
    if all(getattr(cfg, k) == v for k, v in shape.items()):
      return name
  return None


def describe_factors(table: dict[str, float]) -> str:
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

