"""Analytic FLOP count of one pretraining step, per objective.

    from electra_jax import flops
    count = flops.train_flops_per_step(config, vocab_size)   # {'generator/ffn': ..., 'total': ...}
    flops.train_flops_per_token(config, vocab_size)          # count['total'] / (batch * seq)

What is counted: the MODEL FLOPs of the matrix multiplications, 2 FLOPs per
multiply-add, the convention of model FLOPs utilisation (MFU) and of the ELECTRA
paper's compute comparisons.  Elementwise work (biases, GELU, LayerNorm, softmax,
dropout, the loss, the optimizer update), embedding-table gathers and the extra
forward passes of rematerialisation are not counted.  A training step is 3x its
forward pass: the backward pass computes gradients with respect to both the inputs
and the weights of every matmul (every tower is trained, and the embedding tables
below the first matmul are trained too).

Per token of a tower with hidden size h, feed-forward size f, embedding size E,
sequence length L and n layers (forward):
  embeddings_project   2 E h               (only when E != h)
  attention_dense      n * 8 h^2           (query, key, value and output projections)
  attention_scores     n * 2 L h           (q . k for every key; all heads together)
  attention_values     n * 2 L h           (probabilities x values)
  ffn                  n * 4 h f           (intermediate and output dense)
and per position a head runs on:
  rtd_head, copy_head  2 h^2 + 2 h         (dense(h) -> GELU -> dense(1))
  mlm_head             2 h E + 2 E V       (dense(E) -> GELU -> LN -> tied word table)

The objectives (see `OBJECTIVES`), with B sequences of L tokens and N =
max_predictions_per_seq masked slots per sequence (fixed-size, so padding slots
count: they are computed):
  electra, electra_15  generator tower on B*L + mlm_head on B*N;
                       discriminator tower + rtd_head on B*L (electra_15 restricts
                       the loss, not the computation, to the masked positions)
  replace_mlm          generator as above; main tower on B*L + mlm_head on B*N
  all_tokens_mlm       generator as above; main tower + mlm_head + copy_head on B*L
  mlm                  main tower on B*L + mlm_head on B*N (no generator)
The tower that is fine-tuned is called 'discriminator' in every objective (it is
the 'discriminator' subtree of the parameters; for the MLM objectives it is the
main model).

Counts are exact Python integers, so budgets divide without rounding.  The inputs
are a pretraining config (`electra_jax.config.pretrain_config`) or the same
structure as a plain dict (a workdir's config.json).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from electra_jax.errors import UserInputError
from electra_jax.model import EncoderConfig, encoder_config_from, generator_config
from electra_jax.objective import max_predictions_per_seq

# Factor from a forward pass to forward + backward.
TRAIN_MULTIPLIER = 3


@dataclasses.dataclass(frozen=True)
class ObjectiveShape:
  """Which networks an objective runs.

  Attributes:
    generator: whether a generator tower + MLM head on the masked slots runs.
    heads: (head, where) for the main ('discriminator') tower: head in
      {'rtd_head', 'mlm_head', 'copy_head'}, where in {'all', 'masked'} (all L
      positions, or the N masked slots).
  """
  generator: bool
  heads: tuple[tuple[str, str], ...]


OBJECTIVE_SHAPES: dict[str, ObjectiveShape] = {
    "electra": ObjectiveShape(True, (("rtd_head", "all"),)),
    "electra_15": ObjectiveShape(True, (("rtd_head", "all"),)),
    "replace_mlm": ObjectiveShape(True, (("mlm_head", "masked"),)),
    "all_tokens_mlm": ObjectiveShape(True, (("mlm_head", "all"), ("copy_head", "all"))),
    "mlm": ObjectiveShape(False, (("mlm_head", "masked"),)),
}
OBJECTIVES = tuple(OBJECTIVE_SHAPES)


# ----------------------------------------------------------------------------- pieces


def tower_flops_per_token(cfg: EncoderConfig, seq_len: int) -> dict[str, int]:
  """Forward FLOPs per token of embeddings_project + the encoder layers (no head)."""
  h, f, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
  return {
      "embeddings_project": 2 * cfg.embedding_size * h if cfg.embedding_size != h else 0,
      "attention_dense": n * 8 * h * h,
      "attention_scores": n * 2 * seq_len * h,
      "attention_values": n * 2 * seq_len * h,
      "ffn": n * 4 * h * f,
  }


def head_flops_per_position(cfg: EncoderConfig, head: str) -> int:
  """Forward FLOPs of one head at one position of a tower shaped `cfg`."""
  h, e, v = cfg.hidden_size, cfg.embedding_size, cfg.vocab_size
  if head in ("rtd_head", "copy_head"):
    return 2 * h * h + 2 * h
  if head == "mlm_head":
    return 2 * h * e + 2 * e * v
  raise ValueError(f"unknown head {head!r}")


def step_flops(objective: str, disc: EncoderConfig, gen: EncoderConfig | None, *,
               batch_size: int, seq_len: int, num_predictions: int,
               training: bool = True) -> dict[str, int]:
  """FLOPs of one step on `batch_size` sequences of `seq_len` tokens.

  Args:
    objective: one of OBJECTIVES.
    disc: the main ('discriminator') tower.
    gen: the generator tower; ignored (may be None) for objectives without one.
    batch_size, seq_len: the step's global batch shape.
    num_predictions: masked slots per sequence (N).
    training: True = forward + backward (3x), False = the forward pass only.
  Returns:
    {'<tower>/<part>': FLOPs} for the non-zero parts (tower 'generator' or
    'discriminator'; parts as in `tower_flops_per_token` plus the heads) and
    'total', their sum.
  """
  shape = objective_shape(objective)
  tokens = batch_size * seq_len
  slots = batch_size * min(num_predictions, seq_len)
  count = {f"discriminator/{k}": v * tokens
           for k, v in tower_flops_per_token(disc, seq_len).items()}
  for head, where in shape.heads:
    count[f"discriminator/{head}"] = head_flops_per_position(disc, head) * (
        tokens if where == "all" else slots)
  if shape.generator:
    if gen is None:
      raise ValueError(f"objective {objective!r} needs a generator config")
    count.update({f"generator/{k}": v * tokens
                  for k, v in tower_flops_per_token(gen, seq_len).items()})
    count["generator/mlm_head"] = head_flops_per_position(gen, "mlm_head") * slots
  multiplier = TRAIN_MULTIPLIER if training else 1
  count = {k: v * multiplier for k, v in count.items() if v}
  count["total"] = sum(count.values())
  return count


def objective_shape(objective: str) -> ObjectiveShape:
  """The ObjectiveShape of `objective`; UserInputError for an unknown name."""
  if objective not in OBJECTIVE_SHAPES:
    raise UserInputError(f"no FLOP count for objective {objective!r}; known objectives: "
                         f"{', '.join(OBJECTIVES)}")
  return OBJECTIVE_SHAPES[objective]


def tower_totals(count: Mapping[str, int]) -> dict[str, int]:
  """{'generator': ..., 'discriminator': ...}: a step_flops() count summed per tower."""
  totals: dict[str, int] = {}
  for key, value in count.items():
    if "/" in key:
      tower = key.split("/", 1)[0]
      totals[tower] = totals.get(tower, 0) + value
  return totals


# ----------------------------------------------------------------------------- configs


def _section(config: Any, name: str) -> Any:
  try:
    return config[name]
  except (KeyError, TypeError) as e:
    raise UserInputError(f"pretraining config lacks the '{name}' section; pass a config "
                         f"from electra_jax.config.pretrain_config") from e


def config_shapes(config: Any, vocab_size: int
                  ) -> tuple[EncoderConfig, EncoderConfig | None, int, int, int]:
  """(discriminator, generator or None, batch_size, seq_len, num_predictions) of a
  pretraining config, by the same rules as electra_jax.train."""
  model, pretrain = _section(config, "model"), _section(config, "pretrain")
  seq_len = int(_section(config, "data")["max_seq_length"])
  batch_size = int(_section(config, "train")["batch_size"])
  disc = encoder_config_from(model, vocab_size)
  gen = None
  if objective_shape(config["objective"]).generator:
    gen = generator_config(disc, model["generator_size"])
  num_predictions = int(pretrain.get("max_predictions_per_seq", 0)) or max_predictions_per_seq(
      pretrain["mask_prob"], seq_len)
  return disc, gen, batch_size, seq_len, num_predictions


def train_flops_per_step(config: Any, vocab_size: int) -> dict[str, int]:
  """Forward + backward FLOPs of one training step of `config` (see step_flops)."""
  disc, gen, batch_size, seq_len, n = config_shapes(config, vocab_size)
  return step_flops(config["objective"], disc, gen, batch_size=batch_size,
                    seq_len=seq_len, num_predictions=n, training=True)


def forward_flops_per_step(config: Any, vocab_size: int) -> dict[str, int]:
  """Forward-only FLOPs of one step's batch under `config` (see step_flops)."""
  disc, gen, batch_size, seq_len, n = config_shapes(config, vocab_size)
  return step_flops(config["objective"], disc, gen, batch_size=batch_size,
                    seq_len=seq_len, num_predictions=n, training=False)


def train_flops_per_token(config: Any, vocab_size: int) -> float:
  """Training FLOPs per input token (multiply by tokens/s for FLOP/s, e.g. MFU)."""
  _, _, batch_size, seq_len, _ = config_shapes(config, vocab_size)
  return train_flops_per_step(config, vocab_size)["total"] / (batch_size * seq_len)
