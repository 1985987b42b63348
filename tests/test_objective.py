"""Semantics of masking, sampling, labels, losses and metrics, measured over many draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from electra_jax import objective as obj
from electra_jax import vocab_head as vh

PAD, CLS, SEP, MASK = 0, 2, 3, 4
VOCAB = 50
S = obj.ObjectiveSettings(pad_id=PAD, cls_id=CLS, sep_id=SEP, mask_id=MASK, vocab_size=VOCAB,
                          mask_prob=0.15, max_predictions=19)


def make_batch(rng, batch, length, lengths=None):
  """[CLS] a.. [SEP] b.. [SEP] then padding; lengths of real tokens per row."""
  if lengths is None:
    lengths = rng.integers(5, length + 1, size=batch)
  ids = np.zeros((batch, length), np.int32)
  mask = np.zeros((batch, length), np.int32)
  for i, n in enumerate(lengths):
    ids[i, :n] = rng.integers(5, VOCAB, size=n)
    ids[i, 0] = CLS
    ids[i, n - 1] = SEP
    ids[i, n // 2] = SEP
    mask[i, :n] = 1
  return jnp.asarray(ids), jnp.asarray(mask), np.asarray(lengths)


def test_max_predictions_matches_original():
  assert obj.max_predictions_per_seq(0.15, 128) == 19
  assert obj.max_predictions_per_seq(0.25, 512) == 130
  assert obj.max_predictions_per_seq(0.15, 512) == 79


def test_mask_count_candidates_and_split_over_many_draws():
  rng = np.random.default_rng(0)
  ids, mask, lengths = make_batch(rng, 4000, 128)
  # Some rows also contain a literal [MASK] token, which must never be chosen.
  ids = ids.at[::7, 3].set(MASK)
  m = jax.jit(lambda k: obj.mask_tokens(k, ids, mask, S))(jax.random.key(1))
  ids_np, w = np.asarray(ids), np.asarray(m.masked_weights)
  pos = np.asarray(m.masked_positions)
  k = w.sum(1)
  n_cand = ((ids_np != CLS) & (ids_np != SEP) & (ids_np != MASK) & (np.asarray(mask) > 0)).sum(1)
  expected_k = np.minimum(np.clip(np.round(lengths * 0.15), 1, 19), n_cand)
  np.testing.assert_array_equal(k, expected_k)
  assert k.max() == 19  # the cap binds for long rows
  rows = np.arange(len(ids_np))[:, None]
  chosen = ids_np[rows, pos][w > 0]
  assert not np.isin(chosen, [PAD, CLS, SEP, MASK]).any()
  assert (pos[w > 0] < np.repeat(lengths, 19).reshape(-1, 19)[w > 0]).all()  # never padding
  for r in range(50):  # no position chosen twice in a row
    real = pos[r][w[r] > 0]
    assert len(set(real.tolist())) == len(real)
  np.testing.assert_array_equal(np.asarray(m.masked_ids), np.where(w > 0, ids_np[rows, pos],
                                                                   np.asarray(m.masked_ids)))
  # 85% of chosen slots show [MASK], 15% keep the original token; nothing else changes.
  shown = np.asarray(m.input_ids)[rows, pos][w > 0]
  frac_mask = np.mean(shown == MASK)
  assert abs(frac_mask - 0.85) < 0.01, frac_mask
  np.testing.assert_array_equal(shown[shown != MASK], chosen[shown != MASK])
  changed = np.asarray(m.input_ids) != ids_np
  sel = np.zeros_like(changed)
  sel[rows.repeat(19, 1)[w > 0], pos[w > 0]] = True
  assert not (changed & ~sel).any()


def test_positions_are_uniform_over_candidates():
  rng = np.random.default_rng(1)
  ids, mask, _ = make_batch(rng, 20000, 24, lengths=np.full(20000, 24))
  m = obj.mask_tokens(jax.random.key(2), ids, mask, S)
  pos, w = np.asarray(m.masked_positions), np.asarray(m.masked_weights)
  counts = np.bincount(pos[w > 0], minlength=24)
  cand = [i for i in range(24) if i not in (0, 12, 23)]
  assert counts[[0, 12, 23]].sum() == 0
  expected = counts.sum() / len(cand)
  assert np.all(np.abs(counts[cand] - expected) < 5 * np.sqrt(expected))


class StubModel:
  """A stand-in model whose logits are fixed functions of its inputs, recording calls."""

  def __init__(self, gen_table, disc_bias):
    self.gen_table, self.disc_bias, self.disc_inputs = gen_table, disc_bias, []

  def generator(self):
    pass

  def discriminator(self):
    pass

  def apply(self, variables, ids, seg, mask, positions=None, *, deterministic, method, rngs):
    if method == self.generator:  # logits g * gen_table[tok], as the output layer's inputs
      tok = jnp.take_along_axis(ids, positions, 1)
      return vh.VocabProjection(variables["params"]["g"] * jax.nn.one_hot(tok, VOCAB),
                                self.gen_table.T, jnp.zeros(VOCAB, jnp.float32))
    self.disc_inputs.append(ids)
    return variables["params"]["d"] * (self.disc_bias[ids] + 0.1 * seg)


def test_labels_and_losses_against_independent_computation():
  rng = np.random.default_rng(3)
  ids, mask, _ = make_batch(rng, 64, 32)
  seg = jnp.asarray((np.arange(32)[None] > 10).astype(np.int32).repeat(64, 0))
  model = StubModel(jnp.asarray(rng.normal(size=(VOCAB, VOCAB)), jnp.float32),
                    jnp.asarray(rng.normal(size=VOCAB), jnp.float32))
  params = {"g": jnp.float32(1.3), "d": jnp.float32(0.7)}
  batch = {"input_ids": ids, "input_mask": mask, "segment_ids": seg}
  key = jax.random.key(5)
  loss, sums = obj.electra_loss(params, batch, key, apply_fn=model.apply,
                                generator_projection_method=model.generator,
                                discriminator_logits_method=model.discriminator, s=S,
                                deterministic=True)
  # Recompute independently in numpy from the same random draws.
  mask_rng, sample_rng, _, _ = jax.random.split(key, 4)
  m = obj.mask_tokens(mask_rng, ids, mask, S)
  logits = np.asarray(1.3 * model.gen_table[jnp.take_along_axis(m.input_ids,
                                                                m.masked_positions, 1)])
  proj = vh.VocabProjection(jnp.asarray(logits), jnp.eye(VOCAB), jnp.zeros(VOCAB))
  sampled = np.asarray(vh.vocab_outputs(sample_rng, proj).sample)
  w = np.asarray(m.masked_weights)
  pos, orig = np.asarray(m.masked_positions), np.asarray(m.masked_ids)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  mlm = -(np.take_along_axis(logp, orig[..., None], -1)[..., 0] * w).sum() / w.sum()
  fake = np.asarray(ids).copy()
  for r, c in zip(*np.nonzero(w)):
    fake[r, pos[r, c]] = sampled[r, c]
  np.testing.assert_array_equal(np.asarray(model.disc_inputs[-1]), fake)
  labels = np.zeros_like(fake, bool)
  for r, c in zip(*np.nonzero(w)):
    labels[r, pos[r, c]] = sampled[r, c] != orig[r, c]  # a correct sample is "original"
  assert labels.sum() > 0 and (w.sum() - labels.sum()) >= 0
  z = 0.7 * (np.asarray(model.disc_bias)[fake] + 0.1 * np.asarray(seg))
  tok = -(labels * np.log(1 / (1 + np.exp(-z))) + (~labels) * np.log(1 - 1 / (1 + np.exp(-z))))
  mk = np.asarray(mask) > 0
  disc = tok[mk].mean()  # over ALL non-pad tokens, [CLS]/[SEP] included
  assert float(loss) == pytest.approx(mlm + 50.0 * disc, rel=1e-5)
  fin = obj.finalize_metrics(jax.device_get(sums))
  assert fin["masked_lm_loss"] == pytest.approx(mlm, rel=1e-5)
  assert fin["disc_loss"] == pytest.approx(disc, rel=1e-5)
  assert fin["sampled_masked_lm_accuracy"] == pytest.approx(
      ((sampled == orig) * w).sum() / w.sum())
  assert fin["masked_lm_accuracy"] == pytest.approx(
      ((logits.argmax(-1) == orig) * w).sum() / w.sum())
  guess = z > 0
  assert fin["disc_accuracy"] == pytest.approx((guess == labels)[mk].mean())
  assert fin["disc_precision"] == pytest.approx((guess & labels)[mk].sum() / guess[mk].sum())
  assert fin["disc_recall"] == pytest.approx((guess & labels)[mk].sum() / labels[mk].sum())
  assert fin["disc_auc"] == pytest.approx(exact_auc(1 / (1 + np.exp(-z[mk])), labels[mk]),
                                          abs=2e-3)


def exact_auc(scores, labels):
  """Mann-Whitney AUC with average ranks for ties."""
  order = np.argsort(scores, kind="mergesort")
  ranks = np.empty(len(scores))
  s = scores[order]
  i = 0
  while i < len(s):
    j = i
    while j + 1 < len(s) and s[j + 1] == s[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2 + 1
    i = j + 1
  n_pos, n_neg = labels.sum(), (~labels).sum()
  return (ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def test_histogram_auc_matches_exact_auc():
  rng = np.random.default_rng(0)
  labels = rng.random(5000) < 0.3
  scores = np.clip(rng.normal(0.5 + 0.2 * labels, 0.2), 0, 1)
  bins = np.clip((scores * obj.AUC_BINS).astype(int), 0, obj.AUC_BINS - 1)
  pos = np.bincount(bins[labels], minlength=obj.AUC_BINS)
  neg = np.bincount(bins[~labels], minlength=obj.AUC_BINS)
  assert obj.auc_from_histograms(pos, neg) == pytest.approx(exact_auc(scores, labels), abs=1e-3)
  assert obj.auc_from_histograms(np.r_[0, 5], np.r_[5, 0]) == 1.0
  assert obj.auc_from_histograms(np.r_[5, 0], np.r_[0, 5]) == 0.0
