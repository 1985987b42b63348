"""ELECTRA's replaced-token detection and the paper's ablation objectives, as pure functions.

One call of `electra_loss` does, inside the jitted step:
  1. dynamic masking (`mask_tokens`): per sequence k = max(1, min(N, round(p * n)))
     positions drawn uniformly without replacement from the candidates (non-pad
     tokens other than [CLS], [SEP], [MASK]); 85% of them show [MASK], 15% keep
     the original token; positions live in fixed-size [B, N] arrays;
  2. the generator's logits on the N masked slots only (never on all positions),
     streamed over the vocabulary in chunks (electra_jax/vocab_head.py);
  3. a sample from the generator's softmax in float32 (inverse CDF), stopped from
     gradients, written into every masked slot (`vocab_head.vocab_outputs`);
  4. the discriminator on the corrupted sequence; label 1 only where the sample
     differs from the original;
  5. loss = gen_weight * MLM loss (mean over masked slots)
          + disc_weight * sigmoid cross-entropy (mean over non-pad tokens).

The other objectives (`config.objective`, paper Table 5; `pretraining_loss` dispatches):
  electra_15      as electra, but the discriminator loss and its disc_* metrics only
                  over the real masked slots (mean over those slots).
  replace_mlm     steps 1-3 as electra; the main model sees the corrupted sequence
                  (samples in every masked slot, no [MASK]) and predicts the originals
                  at the masked slots with an MLM head.
  all_tokens_mlm  as replace_mlm, but the main model predicts every non-pad token with a
                  copy mechanism: p = D * onehot(input) + (1 - D) * softmax(logits),
                  D = sigmoid(copy logit); loss = mean over non-pad tokens of
                  -log p(original), computed in log space (`copy_mixture_log_prob`).
  mlm             BERT: no generator; of the chosen positions (same selection as
                  electra) 80% show [MASK], 10% a uniformly random ordinary token (any
                  id but [PAD], [CLS], [SEP], [MASK]) and 10% the original; the model
                  predicts the originals at the masked slots.
The main model's MLM loss has weight `MODEL_MLM_WEIGHT` = 1.0; the generator's keeps
gen_weight; disc_weight applies only to the replaced-token loss.

Metrics are returned as additive sums (`Sums`) so that they can be added over
steps, batches and devices exactly, then turned into numbers by
`finalize_metrics`, which reports only the metrics whose sums the objective produced
(both in electra_jax/objective_metrics.py).
"""

import contextlib
import contextvars
import dataclasses
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from electra_jax import counter_rng, vocab_head
# The metric sums each loss returns, and their finalisation (re-exported: train and the
# tests call them through this module).
from electra_jax.objective_metrics import (AUC_BINS, Sums, add_sums,  # noqa: F401
                                           auc_from_histograms, finalize_metrics,
                                           generator_sums, metric_sums, model_mlm_sums,
                                           with_loss)

# Weight of the main model's MLM loss (replace_mlm, all_tokens_mlm, mlm).
MODEL_MLM_WEIGHT = 1.0

# Set by `batch_split_over`: the mesh axis a shard_map splits the batch over.
_BATCH_AXIS: contextvars.ContextVar[str | None] = contextvars.ContextVar("batch_axis",
                                                                         default=None)


@contextlib.contextmanager
def batch_split_over(axis_name: str):
  """While tracing inside, this shard_map body holds one device's rows of the batch:
  `weighted_mean` divides by the whole batch's weight, so the sum over devices of each
  device's loss (and gradient) is the whole batch's."""
  token = _BATCH_AXIS.set(axis_name)
  try:
    yield
  finally:
    _BATCH_AXIS.reset(token)


def weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  """sum(values * weights) / max(sum(weights), 1) over the whole batch's weights."""
  total = jnp.sum(weights)
  axis = _BATCH_AXIS.get()
  if axis is not None:
    total = jax.lax.psum(total, axis)
  return jnp.sum(values * weights) / jnp.maximum(total, 1.0)


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
  # objective 'mlm' (BERT 80/10/10): shares of the masked slots shown as [MASK] and as
  # a random ordinary token; the rest keep the original.
  mlm_mask_token_prob: float = 0.8
  mlm_random_token_prob: float = 0.1
  # Generator output layer: vocabulary entries per streamed chunk, or None for the whole
  # vocabulary at once (vocab_head.chunk_for_platform: chunks on CPU only).
  vocab_chunk: int | None = None

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
               gen_weight=pretrain_cfg.gen_weight, disc_weight=pretrain_cfg.disc_weight,
               mlm_mask_token_prob=pretrain_cfg.get("mlm_mask_token_prob", 0.8),
               mlm_random_token_prob=pretrain_cfg.get("mlm_random_token_prob", 0.1))

  @property
  def special_ids(self) -> tuple[int, ...]:
    """The ids never drawn as random tokens: [PAD], [CLS], [SEP], [MASK] (sorted, unique)."""
    return tuple(sorted({self.pad_id, self.cls_id, self.sep_id, self.mask_id}))


@flax.struct.dataclass
class MaskedBatch:
  input_ids: jax.Array  # [B, L] the masked sequence (generator's input; the model's for mlm)
  masked_positions: jax.Array  # [B, N] int32 positions of the masked slots
  masked_ids: jax.Array  # [B, N] original tokens at those positions
  masked_weights: jax.Array  # [B, N] float32, 1 for a real slot, 0 for padding slots


def candidate_mask(input_ids, input_mask, s: ObjectiveSettings):
  """Tokens that may be masked: non-pad and not [CLS], [SEP], [MASK] or [PAD]."""
  special = ((input_ids == s.cls_id) | (input_ids == s.sep_id) | (input_ids == s.mask_id)
             | (input_ids == s.pad_id))
  return (input_mask > 0) & ~special


def mask_tokens(rng, input_ids, input_mask, s: ObjectiveSettings, *,
                bert_style: bool = False) -> MaskedBatch:
  """Chooses and masks positions (see module docstring).

  ELECTRA (default): s.mask_token_prob of the chosen slots show [MASK], the rest keep
  the original.  bert_style: s.mlm_mask_token_prob show [MASK], s.mlm_random_token_prob
  a uniformly random ordinary token (`random_ordinary_tokens`), the rest the original.
  Both draw the same positions from the same `rng`.
  """
  b, length = input_ids.shape
  n = min(s.max_predictions, length)
  pos_rng, keep_rng = jax.random.split(rng)
  candidates = candidate_mask(input_ids, input_mask, s)
  num_tokens = jnp.sum(input_mask > 0, axis=-1).astype(jnp.float32)
  k = jnp.clip(jnp.round(num_tokens * s.mask_prob), 1, n).astype(jnp.int32)
  k = jnp.minimum(k, jnp.sum(candidates, axis=-1).astype(jnp.int32))
  # Uniform random order of the candidates: top-n of iid uniform 31-bit scores.  Every
  # draw here is counter_rng's, per example row, so accumulated micro-batches draw what
  # the whole batch would (counter_rng.example_rows).
  scores = (counter_rng.bits(pos_rng, (b, length)) >> 1).astype(jnp.int32)
  scores = jnp.where(candidates, scores, -1)
  _, positions = jax.lax.top_k(scores, n)
  weights = (jnp.arange(n)[None, :] < k[:, None])
  positions = jnp.where(weights, positions, 0).astype(jnp.int32)
  masked_ids = jnp.take_along_axis(input_ids, positions, axis=1)
  if not bert_style:
    show_mask = counter_rng.uniform(keep_rng, (b, n)) < s.mask_token_prob
    new_tokens = jnp.where(show_mask, s.mask_id, masked_ids)
  else:
    u = counter_rng.uniform(keep_rng, (b, n))
    random_ids = random_ordinary_tokens(jax.random.fold_in(keep_rng, 1), (b, n), s)
    new_tokens = jnp.where(
        u < s.mlm_mask_token_prob, s.mask_id,
        jnp.where(u < s.mlm_mask_token_prob + s.mlm_random_token_prob, random_ids,
                  masked_ids))
  corrupted = scatter_slots(input_ids, positions, new_tokens, weights)
  return MaskedBatch(input_ids=corrupted, masked_positions=positions, masked_ids=masked_ids,
                     masked_weights=weights.astype(jnp.float32))


def random_ordinary_tokens(rng, shape, s: ObjectiveSettings) -> jax.Array:
  """int32 ids drawn uniformly from the vocab minus `s.special_ids`.

  BERT draws from the whole vocab; here [PAD], [CLS], [SEP] and [MASK] are excluded so a
  random replacement never looks like structure or like a mask ([UNK] may be drawn).
  """
  specials = s.special_ids
  r = counter_rng.randint(rng, shape, s.vocab_size - len(specials))
  for special in specials:  # ascending: shift past each special id in turn
    r = r + (r >= special).astype(jnp.int32)
  return r


def scatter_slots(input_ids, positions, values, weights):
  """input_ids with `values` written at `positions` where `weights` is true."""
  b, length = input_ids.shape
  rows = jnp.arange(b)[:, None]
  # Padding slots are sent out of bounds and dropped, so they never overwrite
  # a real slot that happens to share their placeholder position.
  positions = jnp.where(weights, positions, length)
  return input_ids.at[rows, positions].set(values.astype(input_ids.dtype), mode="drop")


class Corruption(NamedTuple):
  """Steps 1-3 of the module docstring: masking, generator MLM and sampling."""
  masked: MaskedBatch
  gen_predicted: jax.Array  # [B, N] the generator's argmax at the masked slots
  mlm_per_slot: jax.Array  # [B, N] generator cross-entropy per slot
  mlm_loss: jax.Array  # mean of mlm_per_slot over the real slots
  sampled: jax.Array  # [B, N] sampled tokens (no gradient)
  fake_ids: jax.Array  # [B, L] the input with the samples in every masked slot


def corrupt(params, batch, mask_rng, sample_rng, gen_drop, *, apply_fn,
            generator_projection_method, s: ObjectiveSettings,
            deterministic: bool) -> Corruption:
  """Masks the batch, runs the generator on the masked slots and samples replacements.

  The generator's loss, argmax and sample come from `vocab_head.vocab_outputs`, which on
  CPU streams the logits over vocabulary chunks (s.vocab_chunk) instead of a [B, N, V]
  array.
  """
  ids, input_mask, segment_ids = batch["input_ids"], batch["input_mask"], batch["segment_ids"]
  masked = mask_tokens(mask_rng, ids, input_mask, s)
  proj = apply_fn({"params": params}, masked.input_ids, segment_ids, input_mask,
                  masked.masked_positions, deterministic=deterministic,
                  method=generator_projection_method, rngs={"dropout": gen_drop})
  out = vocab_head.vocab_outputs(
      sample_rng, proj, temperature=s.temperature,
      disallowed=masked.masked_ids if s.disallow_correct else None, chunk=s.vocab_chunk)
  w = masked.masked_weights
  mlm_per_slot = out.log_normalizer - proj.target_logits(masked.masked_ids)
  mlm_loss = weighted_mean(mlm_per_slot, w)
  fake_ids = scatter_slots(ids, masked.masked_positions, out.sample, w > 0)
  fake_ids = jax.lax.stop_gradient(fake_ids)
  return Corruption(masked=masked, gen_predicted=out.argmax, mlm_per_slot=mlm_per_slot,
                    mlm_loss=mlm_loss, sampled=out.sample, fake_ids=fake_ids)


def masked_slot_indicator(masked: MaskedBatch, length: int) -> jax.Array:
  """[B, L] float32: 1 at the real masked slots, 0 elsewhere."""
  b = masked.masked_positions.shape[0]
  zeros = jnp.zeros((b, length), jnp.int32)
  ones = jnp.ones_like(masked.masked_positions)
  return scatter_slots(zeros, masked.masked_positions, ones,
                       masked.masked_weights > 0).astype(jnp.float32)


def _replaced_token_loss(params, batch, rng, *, apply_fn, generator_projection_method,
                         discriminator_logits_method, s: ObjectiveSettings,
                         deterministic: bool, masked_only: bool):
  """electra (masked_only=False) and electra_15 (discriminator on masked slots only)."""
  mask_rng, sample_rng, gen_drop, disc_drop = jax.random.split(rng, 4)
  ids, input_mask, segment_ids = batch["input_ids"], batch["input_mask"], batch["segment_ids"]
  c = corrupt(params, batch, mask_rng, sample_rng, gen_drop, apply_fn=apply_fn,
              generator_projection_method=generator_projection_method, s=s,
              deterministic=deterministic)
  labels = (c.fake_ids != ids) & (input_mask > 0)
  disc_logits = apply_fn({"params": params}, c.fake_ids, segment_ids, input_mask,
                         deterministic=deterministic, method=discriminator_logits_method,
                         rngs={"dropout": disc_drop}).astype(jnp.float32)  # [B, L]
  if masked_only:
    tok_w = masked_slot_indicator(c.masked, ids.shape[1])
  else:
    tok_w = (input_mask > 0).astype(jnp.float32)
  disc_per_tok = optax.sigmoid_binary_cross_entropy(disc_logits, labels.astype(jnp.float32))
  disc_loss = weighted_mean(disc_per_tok, tok_w)
  loss = s.gen_weight * c.mlm_loss + s.disc_weight * disc_loss

  sums = metric_sums(gen_predicted=c.gen_predicted, masked=c.masked, sampled=c.sampled,
                     mlm_per_slot=c.mlm_per_slot, disc_logits=disc_logits,
                     disc_per_tok=disc_per_tok, labels=labels, tok_w=tok_w)
  return loss, with_loss(sums, loss)


def electra_loss(params, batch, rng, *, apply_fn: Callable[..., Any],
                 generator_projection_method, discriminator_logits_method,
                 s: ObjectiveSettings, deterministic: bool):
  """Total loss and metric sums for one batch (objective 'electra').

  Args:
    params: the model's parameter tree.
    batch: dict with int32 [B, L] 'input_ids', 'input_mask', 'segment_ids'.
    rng: key for masking, sampling and dropout.
    apply_fn: `model.apply`.
    generator_projection_method: the model's method giving the generator's output-layer
      inputs at the masked slots (a vocab_head.VocabProjection).
    discriminator_logits_method: the model's method giving the replaced-token logits.
    s: objective settings.
    deterministic: True disables dropout (evaluation).
  Returns:
    (loss, sums): scalar loss and a dict of metric sums.
  """
  return _replaced_token_loss(
      params, batch, rng, apply_fn=apply_fn,
      generator_projection_method=generator_projection_method,
      discriminator_logits_method=discriminator_logits_method, s=s,
      deterministic=deterministic, masked_only=False)


def electra_15_loss(params, batch, rng, *, apply_fn: Callable[..., Any],
                    generator_projection_method, discriminator_logits_method,
                    s: ObjectiveSettings, deterministic: bool):
  """As `electra_loss`, with the discriminator loss and disc_* metrics only over the
  real masked slots (mean over those slots): the paper's 'ELECTRA 15%'."""
  return _replaced_token_loss(
      params, batch, rng, apply_fn=apply_fn,
      generator_projection_method=generator_projection_method,
      discriminator_logits_method=discriminator_logits_method, s=s,
      deterministic=deterministic, masked_only=True)


def replace_mlm_loss(params, batch, rng, *, apply_fn: Callable[..., Any],
                     generator_projection_method, model_mlm_logits_method,
                     s: ObjectiveSettings, deterministic: bool):
  """Replace MLM: the main model reads electra's corrupted sequence (generator samples
  in every masked slot) and predicts the originals at the masked slots.

  loss = gen_weight * generator MLM loss + MODEL_MLM_WEIGHT * main-model MLM loss (both
  means over the real masked slots).  Same rng use as `electra_loss`, so the main
  model's input equals electra's discriminator input for the same key.
  """
  mask_rng, sample_rng, gen_drop, model_drop = jax.random.split(rng, 4)
  input_mask, segment_ids = batch["input_mask"], batch["segment_ids"]
  c = corrupt(params, batch, mask_rng, sample_rng, gen_drop, apply_fn=apply_fn,
              generator_projection_method=generator_projection_method, s=s,
              deterministic=deterministic)
  logits = apply_fn({"params": params}, c.fake_ids, segment_ids, input_mask,
                    c.masked.masked_positions, deterministic=deterministic,
                    method=model_mlm_logits_method,
                    rngs={"dropout": model_drop}).astype(jnp.float32)  # [B, N, V]
  per_slot = optax.softmax_cross_entropy_with_integer_labels(logits, c.masked.masked_ids)
  w = c.masked.masked_weights
  model_loss = weighted_mean(per_slot, w)
  loss = s.gen_weight * c.mlm_loss + MODEL_MLM_WEIGHT * model_loss
  sums = generator_sums(gen_predicted=c.gen_predicted, masked=c.masked, sampled=c.sampled,
                        mlm_per_slot=c.mlm_per_slot)
  sums.update(model_mlm_sums(masked=c.masked, per_slot=per_slot,
                             predicted=counter_rng.argmax(logits, axis=-1)))
  return loss, with_loss(sums, loss)


def copy_mixture_log_prob(mlm_logits, copy_logits, input_ids, targets):
  """log p(targets) under p = D * onehot(input_ids) + (1 - D) * softmax(mlm_logits).

  D = sigmoid(copy_logits).  Float32, in log space (log-sigmoid, log-softmax and a
  logaddexp where the target is the input token), so no probability underflows.
  Args: mlm_logits [..., V]; copy_logits, input_ids, targets [...].  Returns [...].
  """
  mlm_logits = mlm_logits.astype(jnp.float32)
  copy_logits = copy_logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(mlm_logits, axis=-1)
  log_softmax_target = jnp.take_along_axis(mlm_logits, targets[..., None], -1)[..., 0] - lse
  log_copy = jax.nn.log_sigmoid(copy_logits)
  log_generate = jax.nn.log_sigmoid(-copy_logits) + log_softmax_target
  return jnp.where(input_ids == targets, jnp.logaddexp(log_copy, log_generate), log_generate)


def copy_mixture_prediction(mlm_logits, copy_logits, input_ids):
  """argmax of the copy mixture p (`copy_mixture_log_prob`) without building p [..., V]:
  the input token when its p is at least the best p of any token, else argmax(logits)."""
  mlm_logits = mlm_logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(mlm_logits, axis=-1)
  log_keep = jax.nn.log_sigmoid(-copy_logits.astype(jnp.float32))
  log_p_best = log_keep + jnp.max(mlm_logits, axis=-1) - lse
  log_p_input = copy_mixture_log_prob(mlm_logits, copy_logits, input_ids, input_ids)
  return jnp.where(log_p_input >= log_p_best, input_ids,
                   counter_rng.argmax(mlm_logits, axis=-1).astype(input_ids.dtype))


def copy_mixture_distribution(mlm_logits, copy_logits, input_ids):
  """The full distribution p [..., V] (float32) of `copy_mixture_log_prob`; for checks and
  analysis, not used by the loss."""
  d = jax.nn.sigmoid(copy_logits.astype(jnp.float32))[..., None]
  onehot = jax.nn.one_hot(input_ids, mlm_logits.shape[-1], dtype=jnp.float32)
  return d * onehot + (1.0 - d) * jax.nn.softmax(mlm_logits.astype(jnp.float32), axis=-1)


def all_tokens_mlm_loss(params, batch, rng, *, apply_fn: Callable[..., Any],
                        generator_projection_method, all_tokens_logits_method,
                        s: ObjectiveSettings, deterministic: bool):
  """All-Tokens MLM: as `replace_mlm_loss`, but the main model predicts every non-pad
  token through the copy mixture (`copy_mixture_log_prob`); its loss is the mean over
  non-pad tokens of -log p(original), with weight MODEL_MLM_WEIGHT."""
  mask_rng, sample_rng, gen_drop, model_drop = jax.random.split(rng, 4)
  ids, input_mask, segment_ids = batch["input_ids"], batch["input_mask"], batch["segment_ids"]
  c = corrupt(params, batch, mask_rng, sample_rng, gen_drop, apply_fn=apply_fn,
              generator_projection_method=generator_projection_method, s=s,
              deterministic=deterministic)
  mlm_logits, copy_logits = apply_fn({"params": params}, c.fake_ids, segment_ids, input_mask,
                                     deterministic=deterministic,
                                     method=all_tokens_logits_method,
                                     rngs={"dropout": model_drop})
  copy_logits = copy_logits.astype(jnp.float32)
  nll = -copy_mixture_log_prob(mlm_logits, copy_logits, c.fake_ids, ids)  # [B, L]
  tok_w = (input_mask > 0).astype(jnp.float32)
  model_loss = weighted_mean(nll, tok_w)
  loss = s.gen_weight * c.mlm_loss + MODEL_MLM_WEIGHT * model_loss

  predicted = copy_mixture_prediction(mlm_logits, copy_logits, c.fake_ids)  # [B, L]
  at_slots = lambda x: jnp.take_along_axis(x, c.masked.masked_positions, axis=1)
  sums = generator_sums(gen_predicted=c.gen_predicted, masked=c.masked, sampled=c.sampled,
                        mlm_per_slot=c.mlm_per_slot)
  sums.update(model_mlm_sums(masked=c.masked, per_slot=at_slots(nll),
                             predicted=at_slots(predicted)))
  replaced = (c.fake_ids != ids).astype(jnp.float32) * tok_w
  original = tok_w - replaced
  copy_prob = jax.nn.sigmoid(copy_logits)
  sums.update({
      "model_tokens": jnp.sum(tok_w),
      "model_all_loss_sum": jnp.sum(nll * tok_w),
      "model_all_correct": jnp.sum((predicted == ids) * tok_w),
      "replaced_tokens": jnp.sum(replaced),
      "original_tokens": jnp.sum(original),
      "copy_prob_replaced_sum": jnp.sum(copy_prob * replaced),
      "copy_prob_original_sum": jnp.sum(copy_prob * original),
  })
  return loss, with_loss(sums, loss)


def bert_mlm_loss(params, batch, rng, *, apply_fn: Callable[..., Any],
                  model_mlm_logits_method, s: ObjectiveSettings, deterministic: bool):
  """BERT's MLM (objective 'mlm'): no generator; 80/10/10 masking
  (`mask_tokens(bert_style=True)`); loss = MODEL_MLM_WEIGHT * mean cross-entropy of
  the originals over the real masked slots."""
  mask_rng, model_drop = jax.random.split(rng)
  ids, input_mask, segment_ids = batch["input_ids"], batch["input_mask"], batch["segment_ids"]
  masked = mask_tokens(mask_rng, ids, input_mask, s, bert_style=True)
  logits = apply_fn({"params": params}, masked.input_ids, segment_ids, input_mask,
                    masked.masked_positions, deterministic=deterministic,
                    method=model_mlm_logits_method,
                    rngs={"dropout": model_drop}).astype(jnp.float32)  # [B, N, V]
  per_slot = optax.softmax_cross_entropy_with_integer_labels(logits, masked.masked_ids)
  w = masked.masked_weights
  loss = MODEL_MLM_WEIGHT * weighted_mean(per_slot, w)
  sums = model_mlm_sums(masked=masked, per_slot=per_slot,
                        predicted=counter_rng.argmax(logits, axis=-1))
  return loss, with_loss(sums, loss)


def pretraining_loss(params, batch, rng, *, model, s: ObjectiveSettings,
                     deterministic: bool):
  """(loss, metric sums) of `model.objective` for one batch.

  model: an `electra_jax.model.ElectraPretrainingModel`; its `objective` attribute
  picks the function (electra_loss, electra_15_loss, replace_mlm_loss,
  all_tokens_mlm_loss, bert_mlm_loss) and its methods supply the logits.
  """
  m, objective = type(model), model.objective
  common = dict(apply_fn=model.apply, s=s, deterministic=deterministic)
  if objective in ("electra", "electra_15"):
    fn = electra_loss if objective == "electra" else electra_15_loss
    return fn(params, batch, rng, generator_projection_method=m.generator_projection,
              discriminator_logits_method=m.discriminator_logits, **common)
  if objective == "replace_mlm":
    return replace_mlm_loss(params, batch, rng,
                            generator_projection_method=m.generator_projection,
                            model_mlm_logits_method=m.model_mlm_logits, **common)
  if objective == "all_tokens_mlm":
    return all_tokens_mlm_loss(params, batch, rng,
                               generator_projection_method=m.generator_projection,
                               all_tokens_logits_method=m.all_tokens_logits, **common)
  if objective == "mlm":
    return bert_mlm_loss(params, batch, rng, model_mlm_logits_method=m.model_mlm_logits,
                         **common)
  raise ValueError(f"unknown objective {objective!r}")
