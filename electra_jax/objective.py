"""ELECTRA's replaced-token-detection objective as pure functions over arrays.

One call of `electra_loss` does, inside the jitted step:
  1. dynamic masking (`mask_tokens`): per sequence k = max(1, min(N, round(p * n)))
     positions drawn uniformly without replacement from the candidates (non-pad
     tokens other than [CLS], [SEP], [MASK]); 85% of them show [MASK], 15% keep
     the original token; positions live in fixed-size [B, N] arrays;
  2. the generator's logits on the N masked slots only (never on all positions);
  3. a Gumbel-max sample in float32, stopped from gradients, written into every
     masked slot (`sample_tokens`);
  4. the discriminator on the corrupted sequence; label 1 only where the sample
     differs from the original;
  5. loss = gen_weight * MLM loss (mean over masked slots)
          + disc_weight * sigmoid cross-entropy (mean over non-pad tokens).

Metrics are returned as additive sums (`Sums`) so that they can be added over
steps, batches and devices exactly, then turned into numbers by
`finalize_metrics`.  AUC comes from per-class histograms of the discriminator's
probabilities (`AUC_BINS` bins), which is exact up to ties within a bin.
"""

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

AUC_BINS = 1000


def max_predictions_per_seq(mask_prob: float, max_seq_length: int) -> int:
  """The original N: int((mask_prob + 0.005) * max_seq_length), 19 for 128 @ 15%."""
  return max(1, int((mask_prob + 0.005) * max_seq_length))


@dataclasses.dataclass(frozen=True)
class ObjectiveSettings:
  """Everything the objective needs besides arrays (static under jit)."""
  pad_id: int
  cls_id: int
  sep_id: int
  mask_id: int
  vocab_size: int
  mask_prob: float = 0.15
  max_predictions: int = 19
  mask_token_prob: float = 0.85
  temperature: float = 1.0
  disallow_correct: bool = False
  gen_weight: float = 1.0
  disc_weight: float = 50.0

  @classmethod
  def from_config(cls, pretrain_cfg, tokenizer, max_seq_length: int) -> "ObjectiveSettings":
    n = pretrain_cfg.max_predictions_per_seq or max_predictions_per_seq(
        pretrain_cfg.mask_prob, max_seq_length)
    return cls(pad_id=tokenizer.pad_id, cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id,
               mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
               mask_prob=pretrain_cfg.mask_prob, max_predictions=n,
               mask_token_prob=pretrain_cfg.mask_token_prob,
               temperature=pretrain_cfg.temperature,
               disallow_correct=pretrain_cfg.disallow_correct,
               gen_weight=pretrain_cfg.gen_weight, disc_weight=pretrain_cfg.disc_weight)


@flax.struct.dataclass
class MaskedBatch:
  input_ids: jax.Array  # [B, L] the sequence shown to the generator
  masked_positions: jax.Array  # [B, N] int32 positions of the masked slots
  masked_ids: jax.Array  # [B, N] original tokens at those positions
  masked_weights: jax.Array  # [B, N] float32, 1 for a real slot, 0 for padding slots


def candidate_mask(input_ids, input_mask, s: ObjectiveSettings):
  """Tokens that may be masked: non-pad and not [CLS], [SEP], [MASK] or [PAD]."""
  special = ((input_ids == s.cls_id) | (input_ids == s.sep_id) | (input_ids == s.mask_id)
             | (input_ids == s.pad_id))
  return (input_mask > 0) & ~special


def mask_tokens(rng, input_ids, input_mask, s: ObjectiveSettings) -> MaskedBatch:
  """Chooses and masks positions (see module docstring)."""
  b, length = input_ids.shape
  n = min(s.max_predictions, length)
  pos_rng, keep_rng = jax.random.split(rng)
  candidates = candidate_mask(input_ids, input_mask, s)
  num_tokens = jnp.sum(input_mask > 0, axis=-1).astype(jnp.float32)
  k = jnp.clip(jnp.round(num_tokens * s.mask_prob), 1, n).astype(jnp.int32)
  k = jnp.minimum(k, jnp.sum(candidates, axis=-1).astype(jnp.int32))
  # Uniform random order of the candidates: top-n of iid uniform scores.
  scores = jnp.where(candidates, jax.random.uniform(pos_rng, (b, length)), -1.0)
  _, positions = jax.lax.top_k(scores, n)
  weights = (jnp.arange(n)[None, :] < k[:, None])
  positions = jnp.where(weights, positions, 0).astype(jnp.int32)
  masked_ids = jnp.take_along_axis(input_ids, positions, axis=1)
  show_mask = jax.random.uniform(keep_rng, (b, n)) < s.mask_token_prob
  new_tokens = jnp.where(show_mask, s.mask_id, masked_ids)
  corrupted = scatter_slots(input_ids, positions, new_tokens, weights)
  return MaskedBatch(input_ids=corrupted, masked_positions=positions, masked_ids=masked_ids,
                     masked_weights=weights.astype(jnp.float32))


def scatter_slots(input_ids, positions, values, weights):
  """input_ids with `values` written at `positions` where `weights` is true."""
  b, length = input_ids.shape
  rows = jnp.arange(b)[:, None]
  # Padding slots are sent out of bounds and dropped, so they never overwrite
  # a real slot that happens to share their placeholder position.
  positions = jnp.where(weights, positions, length)
  return input_ids.at[rows, positions].set(values.astype(input_ids.dtype), mode="drop")


def sample_tokens(rng, logits, s: ObjectiveSettings, original_ids=None):
  """Gumbel-max sample from softmax(logits / T) in float32, without gradient."""
  logits = jax.lax.stop_gradient(logits).astype(jnp.float32) / s.temperature
  if s.disallow_correct:
    logits = logits - 1000.0 * jax.nn.one_hot(original_ids, logits.shape[-1],
                                              dtype=jnp.float32)
  gumbel = jax.random.gumbel(rng, logits.shape, jnp.float32)
  return jax.lax.stop_gradient(jnp.argmax(logits + gumbel, axis=-1).astype(jnp.int32))


Sums = dict[str, jax.Array]


def electra_loss(params, batch, rng, *, apply_fn: Callable[..., Any],
                 generator_logits_method, discriminator_logits_method,
                 s: ObjectiveSettings, deterministic: bool):
  """Total loss and metric sums for one batch.

  Args:
    params: the model's parameter tree.
    batch: dict with int32 [B, L] 'input_ids', 'input_mask', 'segment_ids'.
    rng: key for masking, sampling and dropout.
    apply_fn: `model.apply`.
    generator_logits_method / discriminator_logits_method: the model's methods.
    s: objective settings.
    deterministic: True disables dropout (evaluation).
  Returns:
    (loss, sums): scalar loss and a dict of metric sums.
  """
  mask_rng, sample_rng, gen_drop, disc_drop = jax.random.split(rng, 4)
  ids, input_mask, segment_ids = batch["input_ids"], batch["input_mask"], batch["segment_ids"]
  masked = mask_tokens(mask_rng, ids, input_mask, s)
  variables = {"params": params}
  gen_logits = apply_fn(variables, masked.input_ids, segment_ids, input_mask,
                        masked.masked_positions, deterministic=deterministic,
                        method=generator_logits_method, rngs={"dropout": gen_drop})
  gen_logits = gen_logits.astype(jnp.float32)  # [B, N, V]
  w = masked.masked_weights
  num_slots = jnp.sum(w)
  mlm_per_slot = optax.softmax_cross_entropy_with_integer_labels(gen_logits, masked.masked_ids)
  mlm_loss = jnp.sum(mlm_per_slot * w) / jnp.maximum(num_slots, 1.0)

  sampled = sample_tokens(sample_rng, gen_logits, s, masked.masked_ids)
  fake_ids = scatter_slots(ids, masked.masked_positions, sampled, w > 0)
  fake_ids = jax.lax.stop_gradient(fake_ids)
  labels = (fake_ids != ids) & (input_mask > 0)
  disc_logits = apply_fn(variables, fake_ids, segment_ids, input_mask,
                         deterministic=deterministic, method=discriminator_logits_method,
                         rngs={"dropout": disc_drop}).astype(jnp.float32)  # [B, L]
  tok_w = (input_mask > 0).astype(jnp.float32)
  num_tokens = jnp.sum(tok_w)
  disc_per_tok = optax.sigmoid_binary_cross_entropy(disc_logits, labels.astype(jnp.float32))
  disc_loss = jnp.sum(disc_per_tok * tok_w) / jnp.maximum(num_tokens, 1.0)
  loss = s.gen_weight * mlm_loss + s.disc_weight * disc_loss

  sums = metric_sums(gen_logits=gen_logits, masked=masked, sampled=sampled,
                     mlm_per_slot=mlm_per_slot, disc_logits=disc_logits,
                     disc_per_tok=disc_per_tok, labels=labels, tok_w=tok_w)
  sums["loss"] = loss  # per-batch value; `finalize_metrics` averages it per batch
  sums["batches"] = jnp.ones((), jnp.float32)
  return loss, sums


def metric_sums(*, gen_logits, masked: MaskedBatch, sampled, mlm_per_slot, disc_logits,
                disc_per_tok, labels, tok_w) -> Sums:
  """Additive statistics behind every metric in DESIGN.md §1."""
  w = masked.masked_weights
  pred = jnp.argmax(gen_logits, axis=-1)
  prob = jax.nn.sigmoid(disc_logits)
  guess = disc_logits > 0
  lab = labels.astype(jnp.float32)
  bins = jnp.clip((prob * AUC_BINS).astype(jnp.int32), 0, AUC_BINS - 1).reshape(-1)
  pos_w = (lab * tok_w).reshape(-1)
  neg_w = ((1.0 - lab) * tok_w).reshape(-1)
  return {
      "mlm_slots": jnp.sum(w),
      "mlm_loss_sum": jnp.sum(mlm_per_slot * w),
      "mlm_correct": jnp.sum((pred == masked.masked_ids) * w),
      "sampled_correct": jnp.sum((sampled == masked.masked_ids) * w),
      "disc_tokens": jnp.sum(tok_w),
      "disc_loss_sum": jnp.sum(disc_per_tok * tok_w),
      "disc_correct": jnp.sum((guess == labels) * tok_w),
      "disc_true_pos": jnp.sum((guess & labels) * tok_w),
      "disc_pred_pos": jnp.sum(guess * tok_w),
      "disc_label_pos": jnp.sum(lab * tok_w),
      "auc_pos_hist": jnp.zeros(AUC_BINS, jnp.float32).at[bins].add(pos_w),
      "auc_neg_hist": jnp.zeros(AUC_BINS, jnp.float32).at[bins].add(neg_w),
  }


def add_sums(a: Sums, b: Sums) -> Sums:
  return jax.tree.map(lambda x, y: x + y, a, b)


def auc_from_histograms(pos_hist, neg_hist) -> float:
  """Area under the ROC curve from per-bin counts of positives and negatives.

  Equals P(score_pos > score_neg) + 0.5 * P(tie), treating scores in one bin as tied.
  """
  pos = np.asarray(pos_hist, np.float64)
  neg = np.asarray(neg_hist, np.float64)
  n_pos, n_neg = pos.sum(), neg.sum()
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  neg_below = np.cumsum(neg) - neg  # negatives in strictly lower bins
  return float(np.sum(pos * (neg_below + 0.5 * neg)) / (n_pos * n_neg))


def finalize_metrics(sums) -> dict[str, float]:
  """Turns (host) metric sums into the named metrics of DESIGN.md §1."""
  s = {k: np.asarray(v, np.float64) for k, v in sums.items()}
  div = lambda a, b: float(a / b) if b > 0 else float("nan")
  return {
      "loss": div(s["loss"], s["batches"]),
      "masked_lm_loss": div(s["mlm_loss_sum"], s["mlm_slots"]),
      "masked_lm_accuracy": div(s["mlm_correct"], s["mlm_slots"]),
      "sampled_masked_lm_accuracy": div(s["sampled_correct"], s["mlm_slots"]),
      "disc_loss": div(s["disc_loss_sum"], s["disc_tokens"]),
      "disc_accuracy": div(s["disc_correct"], s["disc_tokens"]),
      "disc_precision": div(s["disc_true_pos"], s["disc_pred_pos"]),
      "disc_recall": div(s["disc_true_pos"], s["disc_label_pos"]),
      "disc_auc": auc_from_histograms(s["auc_pos_hist"], s["auc_neg_hist"]),
      "replaced_fraction": div(s["disc_label_pos"], s["disc_tokens"]),
  }
