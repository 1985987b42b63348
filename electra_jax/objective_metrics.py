"""The additive metric sums of the pretraining losses, and the metrics made from them.

Every loss in electra_jax.objective returns (loss, sums): per-batch sums that add up
over devices, micro-batches and eval batches (`add_sums`), turned into DESIGN.md §1's
named metrics once on the host (`finalize_metrics`).  disc_auc comes from histograms
of the discriminator's probabilities (`AUC_BINS` bins), exact up to ties within a bin.
"""

import jax
import jax.numpy as jnp
import numpy as np


AUC_BINS = 1000
Sums = dict[str, jax.Array]


def with_loss(sums: Sums, loss) -> Sums:
  """`sums` with the batch's loss and a batch count (the loss is averaged per batch)."""
  sums["loss"] = loss  # per-batch value; `finalize_metrics` averages it per batch
  sums["batches"] = jnp.ones((), jnp.float32)
  return sums


def generator_sums(*, gen_predicted, masked, sampled, mlm_per_slot) -> Sums:
  """Additive statistics of the generator's MLM (masked_lm_*, sampled_masked_lm_*);
  `masked` is the objective's MaskedBatch, gen_predicted the argmax per slot."""
  w = masked.masked_weights
  pred = gen_predicted
  return {
      "mlm_slots": jnp.sum(w),
      "mlm_loss_sum": jnp.sum(mlm_per_slot * w),
      "mlm_correct": jnp.sum((pred == masked.masked_ids) * w),
      "sampled_correct": jnp.sum((sampled == masked.masked_ids) * w),
  }


def discriminator_sums(*, disc_logits, disc_per_tok, labels, tok_w) -> Sums:
  """Additive statistics of the replaced-token detector (disc_*), weighted by tok_w."""
  prob = jax.nn.sigmoid(disc_logits)
  guess = disc_logits > 0
  lab = labels.astype(jnp.float32)
  bins = jnp.clip((prob * AUC_BINS).astype(jnp.int32), 0, AUC_BINS - 1).reshape(-1)
  pos_w = (lab * tok_w).reshape(-1)
  neg_w = ((1.0 - lab) * tok_w).reshape(-1)
  return {
      "disc_tokens": jnp.sum(tok_w),
      "disc_loss_sum": jnp.sum(disc_per_tok * tok_w),
      "disc_correct": jnp.sum((guess == labels) * tok_w),
      "disc_true_pos": jnp.sum((guess & labels) * tok_w),
      "disc_pred_pos": jnp.sum(guess * tok_w),
      "disc_label_pos": jnp.sum(lab * tok_w),
      "auc_pos_hist": jnp.zeros(AUC_BINS, jnp.float32).at[bins].add(pos_w),
      "auc_neg_hist": jnp.zeros(AUC_BINS, jnp.float32).at[bins].add(neg_w),
  }


def metric_sums(*, gen_predicted, masked, sampled, mlm_per_slot, disc_logits,
                disc_per_tok, labels, tok_w) -> Sums:
  """Additive statistics behind every ELECTRA metric in DESIGN.md §1."""
  sums = generator_sums(gen_predicted=gen_predicted, masked=masked, sampled=sampled,
                        mlm_per_slot=mlm_per_slot)
  sums.update(discriminator_sums(disc_logits=disc_logits, disc_per_tok=disc_per_tok,
                                 labels=labels, tok_w=tok_w))
  return sums


def model_mlm_sums(*, masked, per_slot, predicted) -> Sums:
  """Additive statistics of the main model's MLM on the masked slots (model_mlm_*)."""
  w = masked.masked_weights
  return {
      "model_mlm_slots": jnp.sum(w),
      "model_mlm_loss_sum": jnp.sum(per_slot * w),
      "model_mlm_correct": jnp.sum((predicted == masked.masked_ids) * w),
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


# Reported metrics, in order: (name, numerator sum, denominator sum).  A metric is
# reported when the objective produced both sums; disc_auc uses the AUC histograms.
_METRICS = (
    ("masked_lm_loss", "mlm_loss_sum", "mlm_slots"),
    ("masked_lm_accuracy", "mlm_correct", "mlm_slots"),
    ("sampled_masked_lm_accuracy", "sampled_correct", "mlm_slots"),
    ("disc_loss", "disc_loss_sum", "disc_tokens"),
    ("disc_accuracy", "disc_correct", "disc_tokens"),
    ("disc_precision", "disc_true_pos", "disc_pred_pos"),
    ("disc_recall", "disc_true_pos", "disc_label_pos"),
    ("disc_auc", "auc_pos_hist", "auc_neg_hist"),
    ("replaced_fraction", "disc_label_pos", "disc_tokens"),
    ("model_mlm_loss", "model_mlm_loss_sum", "model_mlm_slots"),
    ("model_mlm_accuracy", "model_mlm_correct", "model_mlm_slots"),
    ("model_all_tokens_loss", "model_all_loss_sum", "model_tokens"),
    ("model_all_tokens_accuracy", "model_all_correct", "model_tokens"),
    ("copy_prob_replaced", "copy_prob_replaced_sum", "replaced_tokens"),
    ("copy_prob_original", "copy_prob_original_sum", "original_tokens"),
)


def finalize_metrics(sums) -> dict[str, float]:
  """Turns (host) metric sums into named metrics: 'loss' plus those of `_METRICS` whose
  sums exist (DESIGN.md §1's names for the generator and discriminator; model_mlm_*,
  model_all_tokens_* and copy_prob_* for the main-model MLM objectives)."""
  s = {k: np.asarray(v, np.float64) for k, v in sums.items()}
  div = lambda a, b: float(a / b) if b > 0 else float("nan")
  out = {"loss": div(s["loss"], s["batches"])}
  for name, num, den in _METRICS:
    if num not in s or den not in s:
      continue
    if name == "disc_auc":
      out[name] = auc_from_histograms(s[num], s[den])
    else:
      out[name] = div(s[num], s[den])
  return out
