"""The paper's ablation objectives (electra_15, replace_mlm, all_tokens_mlm, mlm) and GDES.

Objective semantics are checked on tiny arrays with a stub model whose logits are fixed
functions of its inputs and of per-position parameters: the gradient with respect to
those parameters shows exactly which positions carry loss, and every loss is recomputed
independently in NumPy from the same random draws.  End-to-end runs check that each
objective trains through `train.train_and_evaluate`, and that export and fine-tuning
read the right weights out of the new layouts.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from electra_jax import model as M
from electra_jax import objective as obj
from electra_jax import vocab_head as vh
from electra_jax.errors import UserInputError

PAD, CLS, SEP, MASK = 0, 2, 3, 4
VOCAB = 50
S = obj.ObjectiveSettings(pad_id=PAD, cls_id=CLS, sep_id=SEP, mask_id=MASK, vocab_size=VOCAB,
                          mask_prob=0.15, max_predictions=19)
B, L = 48, 32


def make_batch(seed=0, batch=B, length=L):
  """[CLS] a.. [SEP] b.. [SEP] then padding, ordinary tokens 5..VOCAB-1."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(8, length + 1, size=batch)
  lengths[0] = length
  ids = np.zeros((batch, length), np.int32)
  mask = np.zeros((batch, length), np.int32)
  for i, n in enumerate(lengths):
    ids[i, :n] = rng.integers(5, VOCAB, size=n)
    ids[i, [0, n // 2, n - 1]] = [CLS, SEP, SEP]
    mask[i, :n] = 1
  seg = (np.arange(length)[None] > length // 2).astype(np.int32) * mask
  return {"input_ids": jnp.asarray(ids), "input_mask": jnp.asarray(mask),
          "segment_ids": jnp.asarray(seg)}


class Stub:
  """A stand-in model: logits are fixed functions of the input ids, scaled or shifted by
  per-position parameters, so d(loss)/d(param) is nonzero exactly where loss is taken."""

  def __init__(self, seed=0):
    rng = np.random.default_rng(seed)
    gen_table = rng.normal(size=(VOCAB, VOCAB)) * 2.0
    gen_table[:, MASK] = -30.0  # the generator never samples [MASK]
    self.gen_table = jnp.asarray(gen_table, jnp.float32)
    self.disc_bias = jnp.asarray(rng.normal(size=VOCAB), jnp.float32)
    self.mlm_table = jnp.asarray(rng.normal(size=(VOCAB, VOCAB)), jnp.float32)
    self.copy_bias = jnp.asarray(rng.normal(size=VOCAB), jnp.float32)
    self.inputs = {}

  def params(self):
    return {"g": jnp.float32(1.3), "d": jnp.float32(0.7), "pos": jnp.ones((B, L), jnp.float32),
            "shift": jnp.zeros((B, L), jnp.float32)}

  def generator(self):
    pass

  def discriminator(self):
    pass

  def model_mlm(self):
    pass

  def all_tokens(self):
    pass

  def apply(self, variables, ids, seg, mask, positions=None, *, deterministic, method, rngs):
    del seg, mask, deterministic, rngs
    p = variables["params"]
    if method == self.generator:  # logits g * gen_table[tok], as the output layer's inputs
      tok = jnp.take_along_axis(ids, positions, 1)
      return vh.VocabProjection(p["g"] * jax.nn.one_hot(tok, VOCAB), self.gen_table.T,
                                jnp.zeros(VOCAB, jnp.float32))
    self.inputs[method.__name__] = ids
    if method == self.discriminator:
      return p["d"] * self.disc_bias[ids] + p["shift"]
    if method == self.model_mlm:
      scale = jnp.take_along_axis(p["pos"], positions, 1)
      return scale[..., None] * self.mlm_table[jnp.take_along_axis(ids, positions, 1)]
    assert method == self.all_tokens
    return p["pos"][..., None] * self.mlm_table[ids], self.copy_bias[ids] + p["shift"]


def run(name, stub, params, batch, key):
  common = dict(apply_fn=stub.apply, s=S, deterministic=True)
  if name in ("electra", "electra_15"):
    fn = obj.electra_loss if name == "electra" else obj.electra_15_loss
    return fn(params, batch, key, generator_projection_method=stub.generator,
              discriminator_logits_method=stub.discriminator, **common)
  if name == "replace_mlm":
    return obj.replace_mlm_loss(params, batch, key, generator_projection_method=stub.generator,
                                model_mlm_logits_method=stub.model_mlm, **common)
  if name == "all_tokens_mlm":
    return obj.all_tokens_mlm_loss(params, batch, key, generator_projection_method=stub.generator,
                                   all_tokens_logits_method=stub.all_tokens, **common)
  return obj.bert_mlm_loss(params, batch, key, model_mlm_logits_method=stub.model_mlm,
                           **common)


def draws(batch, key):
  """The masking and sampling every generator objective makes with `key`, in NumPy."""
  mask_rng, sample_rng, _, _ = jax.random.split(key, 4)
  m = obj.mask_tokens(mask_rng, batch["input_ids"], batch["input_mask"], S)
  stub = Stub()
  logits = 1.3 * stub.gen_table[jnp.take_along_axis(m.input_ids, m.masked_positions, 1)]
  sampled = np.asarray(vh.vocab_outputs(
      sample_rng, vh.VocabProjection(logits, jnp.eye(VOCAB), jnp.zeros(VOCAB))).sample)
  pos, w = np.asarray(m.masked_positions), np.asarray(m.masked_weights)
  ids = np.asarray(batch["input_ids"])
  fake = ids.copy()
  slot = np.zeros(ids.shape, bool)
  for r, c in zip(*np.nonzero(w)):
    fake[r, pos[r, c]] = sampled[r, c]
    slot[r, pos[r, c]] = True
  logits = np.asarray(logits, np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  orig = np.asarray(m.masked_ids)
  gen_mlm = -(np.take_along_axis(logp, orig[..., None], -1)[..., 0] * w).sum() / w.sum()
  return dict(m=m, fake=fake, slot=slot, gen_mlm=gen_mlm, pos=pos, w=w, orig=orig,
              sampled=sampled)


def loss_positions(name, batch, key):
  """[B, L] bool: positions whose per-position parameter receives gradient."""
  stub = Stub()
  param = "shift" if name in ("electra", "electra_15") else "pos"
  g = jax.grad(lambda p: run(name, stub, p, batch, key)[0])(stub.params())
  return np.asarray(g[param]) != 0


def _log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


# ----------------------------------------------------------------------------- objectives


def test_electra_15_disc_loss_is_the_mean_over_masked_slots():
  batch, key = make_batch(), jax.random.key(3)
  stub = Stub()
  loss, sums = run("electra_15", stub, stub.params(), batch, key)
  d = draws(batch, key)
  np.testing.assert_array_equal(np.asarray(stub.inputs["discriminator"]), d["fake"])
  ids = np.asarray(batch["input_ids"])
  labels = d["fake"] != ids
  z = 0.7 * np.asarray(stub.disc_bias, np.float64)[d["fake"]]
  per_tok = -(labels * _log_sigmoid(z) + (~labels) * _log_sigmoid(-z))
  disc15 = per_tok[d["slot"]].mean()
  assert float(loss) == pytest.approx(d["gen_mlm"] + 50.0 * disc15, rel=1e-5)
  fin = obj.finalize_metrics(jax.device_get(sums))
  assert fin["disc_loss"] == pytest.approx(disc15, rel=1e-5)
  assert fin["disc_accuracy"] == pytest.approx(((z > 0) == labels)[d["slot"]].mean())
  assert fin["replaced_fraction"] == pytest.approx(labels[d["slot"]].mean())
  assert 0 < fin["replaced_fraction"] < 1
  # Exactly the real masked slots carry discriminator loss; electra uses every non-pad token.
  np.testing.assert_array_equal(loss_positions("electra_15", batch, key), d["slot"])
  np.testing.assert_array_equal(loss_positions("electra", batch, key),
                                np.asarray(batch["input_mask"]) > 0)
  _, electra_sums = run("electra", stub, stub.params(), batch, key)
  assert set(fin) == set(obj.finalize_metrics(jax.device_get(electra_sums)))


def test_replace_mlm_main_model_reads_electras_corrupted_sequence():
  batch, key = make_batch(1), jax.random.key(4)
  stub = Stub()
  run("electra", stub, stub.params(), batch, key)
  loss, sums = run("replace_mlm", stub, stub.params(), batch, key)
  d = draws(batch, key)
  main_input = np.asarray(stub.inputs["model_mlm"])
  np.testing.assert_array_equal(main_input, np.asarray(stub.inputs["discriminator"]))
  np.testing.assert_array_equal(main_input, d["fake"])
  assert not (main_input == MASK).any()  # samples in every masked slot, no [MASK]
  assert (main_input != np.asarray(batch["input_ids"])).any()
  # Main-model MLM: cross-entropy of the originals at the masked slots only.
  logits = np.asarray(stub.mlm_table, np.float64)[np.take_along_axis(main_input, d["pos"], 1)]
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, d["orig"][..., None], -1)[..., 0]
  model_mlm = (nll * d["w"]).sum() / d["w"].sum()
  assert float(loss) == pytest.approx(d["gen_mlm"] + 1.0 * model_mlm, rel=1e-5)
  fin = obj.finalize_metrics(jax.device_get(sums))
  assert set(fin) == {"loss", "masked_lm_loss", "masked_lm_accuracy",
                      "sampled_masked_lm_accuracy", "model_mlm_loss", "model_mlm_accuracy"}
  assert fin["model_mlm_loss"] == pytest.approx(model_mlm, rel=1e-5)
  assert fin["masked_lm_loss"] == pytest.approx(d["gen_mlm"], rel=1e-5)
  assert fin["model_mlm_accuracy"] == pytest.approx(
      ((logits.argmax(-1) == d["orig"]) * d["w"]).sum() / d["w"].sum())
  np.testing.assert_array_equal(loss_positions("replace_mlm", batch, key), d["slot"])


def np_copy_mixture(mlm_logits, copy_logits, input_ids):
  """p = D * onehot(input) + (1 - D) * softmax(logits) in float64."""
  x = np.asarray(mlm_logits, np.float64)
  soft = np.exp(x - x.max(-1, keepdims=True))
  soft /= soft.sum(-1, keepdims=True)
  dd = 1 / (1 + np.exp(-np.asarray(copy_logits, np.float64)))[..., None]
  onehot = np.eye(x.shape[-1])[np.asarray(input_ids)]
  return dd * onehot + (1 - dd) * soft


def test_copy_mixture_is_a_distribution_and_stable_in_log_space():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(6, 9, VOCAB)) * 3, jnp.float32)
  copy = jnp.asarray(rng.normal(size=(6, 9)) * 3, jnp.float32)
  inputs = jnp.asarray(rng.integers(0, VOCAB, (6, 9)), jnp.int32)
  targets = jnp.where(jnp.asarray(rng.random((6, 9)) < 0.5), inputs,
                      jnp.asarray(rng.integers(0, VOCAB, (6, 9)), jnp.int32))
  p = np.asarray(obj.copy_mixture_distribution(logits, copy, inputs))
  np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
  ref = np_copy_mixture(logits, copy, inputs)
  np.testing.assert_allclose(p, ref, atol=1e-6)
  logp = np.asarray(obj.copy_mixture_log_prob(logits, copy, inputs, targets))
  np.testing.assert_allclose(
      logp, np.log(np.take_along_axis(ref, np.asarray(targets)[..., None], -1)[..., 0]),
      rtol=1e-5, atol=1e-5)
  pred = np.asarray(obj.copy_mixture_prediction(logits, copy, inputs))
  np.testing.assert_array_equal(pred, ref.argmax(-1))
  # Extreme logits: probabilities far below float32's range still give finite log p and
  # gradients (a log of summed probabilities would give -inf here).
  big = jnp.asarray([[[300.0, -300.0, 0.0], [0.0, -300.0, 300.0]]], jnp.float32)
  copy_big = jnp.asarray([[120.0, 120.0]], jnp.float32)
  inp = jnp.asarray([[0, 1]], jnp.int32)
  tgt = jnp.asarray([[1, 1]], jnp.int32)
  val, grads = jax.value_and_grad(lambda a, c: jnp.sum(obj.copy_mixture_log_prob(
      a, c, inp, tgt)), argnums=(0, 1))(big, copy_big)
  per = np.asarray(obj.copy_mixture_log_prob(big, copy_big, inp, tgt))
  # Row 0: target is not the input: log(1 - D) + log softmax = -120 + (-600).
  # Row 1: target is the input, D ~ 1: log p ~ 0.
  np.testing.assert_allclose(per, [[-720.0, 0.0]], atol=1e-3)
  assert np.isfinite(float(val)) and all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_all_tokens_mlm_loss_matches_numpy_on_every_non_pad_token():
  batch, key = make_batch(2), jax.random.key(5)
  stub = Stub()
  loss, sums = run("all_tokens_mlm", stub, stub.params(), batch, key)
  d = draws(batch, key)
  main_input = np.asarray(stub.inputs["all_tokens"])
  np.testing.assert_array_equal(main_input, d["fake"])
  ids, real = np.asarray(batch["input_ids"]), np.asarray(batch["input_mask"]) > 0
  p = np_copy_mixture(stub.mlm_table[main_input], stub.copy_bias[main_input], main_input)
  nll = -np.log(np.take_along_axis(p, ids[..., None], -1)[..., 0])
  all_tokens = nll[real].mean()
  assert float(loss) == pytest.approx(d["gen_mlm"] + 1.0 * all_tokens, rel=1e-5)
  fin = obj.finalize_metrics(jax.device_get(sums))
  assert set(fin) == {"loss", "masked_lm_loss", "masked_lm_accuracy",
                      "sampled_masked_lm_accuracy", "model_mlm_loss", "model_mlm_accuracy",
                      "model_all_tokens_loss", "model_all_tokens_accuracy",
                      "copy_prob_replaced", "copy_prob_original"}
  assert fin["model_all_tokens_loss"] == pytest.approx(all_tokens, rel=1e-5)
  assert fin["model_mlm_loss"] == pytest.approx(nll[d["slot"]].mean(), rel=1e-5)
  correct = p.argmax(-1) == ids
  assert fin["model_all_tokens_accuracy"] == pytest.approx(correct[real].mean())
  assert fin["model_mlm_accuracy"] == pytest.approx(correct[d["slot"]].mean())
  replaced = (main_input != ids) & real
  dd = 1 / (1 + np.exp(-np.asarray(stub.copy_bias, np.float64)[main_input]))
  assert replaced.sum() > 0
  assert fin["copy_prob_replaced"] == pytest.approx(dd[replaced].mean(), rel=1e-5)
  assert fin["copy_prob_original"] == pytest.approx(dd[real & ~replaced].mean(), rel=1e-5)
  # Every non-pad token carries loss, padding none.
  np.testing.assert_array_equal(loss_positions("all_tokens_mlm", batch, key), real)


def test_mlm_masking_is_80_10_10_over_the_electra_positions():
  rng = np.random.default_rng(0)
  n_rows, length = 4000, 128
  lengths = rng.integers(5, length + 1, size=n_rows)
  ids = np.zeros((n_rows, length), np.int32)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  ids[mask > 0] = rng.integers(5, VOCAB, size=int(mask.sum()))
  ids[:, 0] = CLS
  ids[np.arange(n_rows), lengths - 1] = SEP
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)
  key = jax.random.key(7)
  # ids and mask are arguments, not closed-over constants XLA would try to fold.
  bert = jax.jit(lambda k, i, m: obj.mask_tokens(k, i, m, S, bert_style=True))(key, ids, mask)
  electra = jax.jit(lambda k, i, m: obj.mask_tokens(k, i, m, S))(key, ids, mask)
  # Same position selection (k = round(p * n), uniform over candidates).
  np.testing.assert_array_equal(bert.masked_positions, electra.masked_positions)
  np.testing.assert_array_equal(bert.masked_weights, electra.masked_weights)
  np.testing.assert_array_equal(bert.masked_ids, electra.masked_ids)
  w = np.asarray(bert.masked_weights) > 0
  shown = np.take_along_axis(np.asarray(bert.input_ids), np.asarray(bert.masked_positions),
                             1)[w]
  orig = np.asarray(bert.masked_ids)[w]
  n = len(shown)
  ordinary = VOCAB - 4
  expected = {"mask": 0.8, "random": 0.1 * (ordinary - 1) / ordinary,
              "same": 0.1 + 0.1 / ordinary}
  observed = {"mask": np.mean(shown == MASK),
              "random": np.mean((shown != MASK) & (shown != orig)),
              "same": np.mean(shown == orig)}
  for k, p in expected.items():
    assert abs(observed[k] - p) < 5 * np.sqrt(p * (1 - p) / n), (k, observed[k], p)
  random_tokens = shown[(shown != MASK) & (shown != orig)]
  assert not np.isin(random_tokens, [PAD, CLS, SEP, MASK]).any()
  # Outside the masked slots nothing changes.
  changed = np.asarray(bert.input_ids) != np.asarray(ids)
  slot = np.zeros_like(changed)
  rows = np.repeat(np.arange(n_rows)[:, None], w.shape[1], 1)
  slot[rows[w], np.asarray(bert.masked_positions)[w]] = True
  assert not (changed & ~slot).any()


def test_random_ordinary_tokens_are_uniform_and_never_special():
  s = obj.ObjectiveSettings(pad_id=0, cls_id=7, sep_id=3, mask_id=11, vocab_size=16)
  draws_ = np.asarray(obj.random_ordinary_tokens(jax.random.key(0), (200_000,), s))
  counts = np.bincount(draws_, minlength=16)
  assert counts[[0, 3, 7, 11]].sum() == 0 and counts.sum() == 200_000
  ordinary = [i for i in range(16) if i not in (0, 3, 7, 11)]
  expected = 200_000 / len(ordinary)
  assert np.all(np.abs(counts[ordinary] - expected) < 5 * np.sqrt(expected))


def test_mlm_loss_is_taken_on_the_masked_slots_only():
  batch, key = make_batch(3), jax.random.key(6)
  stub = Stub()
  loss, sums = run("mlm", stub, stub.params(), batch, key)
  mask_rng, _ = jax.random.split(key)
  m = obj.mask_tokens(mask_rng, batch["input_ids"], batch["input_mask"], S, bert_style=True)
  main_input = np.asarray(stub.inputs["model_mlm"])
  np.testing.assert_array_equal(main_input, np.asarray(m.input_ids))
  assert "generator" not in stub.inputs and (main_input == MASK).any()
  pos, w, orig = (np.asarray(x) for x in (m.masked_positions, m.masked_weights, m.masked_ids))
  logits = np.asarray(stub.mlm_table, np.float64)[np.take_along_axis(main_input, pos, 1)]
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -(np.take_along_axis(logp, orig[..., None], -1)[..., 0] * w).sum() / w.sum()
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  fin = obj.finalize_metrics(jax.device_get(sums))
  assert set(fin) == {"loss", "model_mlm_loss", "model_mlm_accuracy"}
  assert fin["model_mlm_loss"] == pytest.approx(expected, rel=1e-5)
  slot = np.zeros(main_input.shape, bool)
  for r, c in zip(*np.nonzero(w)):
    slot[r, pos[r, c]] = True
  np.testing.assert_array_equal(loss_positions("mlm", batch, key), slot)


def test_objective_names_agree_and_config_checks():
  from electra_jax import train  # pylint: disable=g-import-not-at-top
  from electra_jax.config import pretrain_config  # pylint: disable=g-import-not-at-top
  assert M.OBJECTIVES == ("electra", "electra_15", "replace_mlm", "all_tokens_mlm", "mlm")
  for name in M.OBJECTIVES:
    c = pretrain_config("tiny")
    c.objective = name
    train.validate_config(c)
  c = pretrain_config("tiny")
  c.objective = "mlm"
  c.model.embedding_sharing = "gdes"
  with pytest.raises(UserInputError, match="has no generator, so config.model.embedding_sharing"):
    train.validate_config(c)
  c = pretrain_config("tiny")
  c.model.embedding_sharing = "shared"
  with pytest.raises(UserInputError, match="embedding_sharing='shared' is not one of"):
    train.validate_config(c)
  c = pretrain_config("tiny")
  c.pretrain.mlm_random_token_prob = 0.5
  with pytest.raises(UserInputError, match="mlm_random_token_prob"):
    train.validate_config(c)


# ----------------------------------------------------------------------------- end to end


# name -> (objective, embedding_sharing); each sharing mode rides along with an objective.
RUNS = {"electra_15": ("electra_15", "gdes"), "replace_mlm": ("replace_mlm", "tied"),
        "all_tokens_mlm": ("all_tokens_mlm", "untied"), "mlm": ("mlm", "tied")}
EVAL_METRICS = {
    "electra_15": {"masked_lm_loss", "masked_lm_accuracy", "sampled_masked_lm_accuracy",
                   "disc_loss", "disc_accuracy", "disc_precision", "disc_recall", "disc_auc",
                   "replaced_fraction"},
    "replace_mlm": {"masked_lm_loss", "masked_lm_accuracy", "sampled_masked_lm_accuracy",
                    "model_mlm_loss", "model_mlm_accuracy"},
    "all_tokens_mlm": {"masked_lm_loss", "masked_lm_accuracy", "sampled_masked_lm_accuracy",
                       "model_mlm_loss", "model_mlm_accuracy", "model_all_tokens_loss",
                       "model_all_tokens_accuracy", "copy_prob_replaced",
                       "copy_prob_original"},
    "mlm": {"model_mlm_loss", "model_mlm_accuracy"},
}


@pytest.fixture(scope="module")
def pretrained(tiny_config, corpus_glob, cache_dir, tmp_path_factory):
  """`get(name)` -> (workdir, config, final eval metrics), each run trained once.

  A one-layer, 32-wide model without dropout: compiling the training step dominates the
  run, and this keeps each compile to about half the tiny model's.
  """
  from electra_jax import train  # pylint: disable=g-import-not-at-top
  done = {}

  def get(name):
    if name not in done:
      config = tiny_config(corpus_glob, cache_dir, steps=40, log_every=20, eval_every=40,
                           checkpoint_every=40, eval_batches=2)
      m = config.model
      m.num_layers, m.hidden_size, m.embedding_size, m.num_heads = 1, 32, 16, 1
      m.intermediate_size, m.dropout_rate, m.attention_dropout_rate = 64, 0.0, 0.0
      config.model.generator_size = 0.5
      config.train.batch_size = 16
      config.optim.learning_rate = 2e-3
      config.optim.warmup_steps = 5
      config.objective, config.model.embedding_sharing = RUNS[name]
      workdir = str(tmp_path_factory.mktemp(name) / "run")
      done[name] = (workdir, config, train.train_and_evaluate(config, workdir))
    return done[name]

  return get


def _metrics_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("name", list(RUNS))
def test_each_objective_trains_and_lowers_its_held_out_loss(pretrained, name):
  workdir, _, final = pretrained(name)
  rows = _metrics_rows(workdir)
  start = next(r for r in rows if r["step"] == 0 and "eval/loss" in r)
  names = {k[len("eval/"):] for k in final}
  assert names == EVAL_METRICS[name] | {"loss"}
  assert {k[len("eval/"):] for k in start if k.startswith("eval/")} == names
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [20, 40]
  for r in train_rows:
    assert {k[len("train/"):] for k in r if k.startswith("train/")} == (
        names | {"grad_norm", "learning_rate"})
    # Losses and optimizer scalars are finite (a ratio such as disc_precision may be NaN
    # while the discriminator predicts no positives).
    assert all(np.isfinite(v) for k, v in r.items()
               if k.startswith("train/") and k.endswith(("loss", "norm", "rate")))
  print(name, "held-out loss", round(start["eval/loss"], 3), "->", round(final["eval/loss"], 3))
  assert final["eval/loss"] < start["eval/loss"] - 0.1


def _restore_pretraining_params(workdir, config):
  from electra_jax import train  # pylint: disable=g-import-not-at-top
  from electra_jax.tokenization import load_tokenizer  # pylint: disable=g-import-not-at-top
  vocab = os.path.join(workdir, "vocab", os.listdir(os.path.join(workdir, "vocab"))[0])
  disc = M.encoder_config_from(config.model, load_tokenizer(vocab).vocab_size)
  heads = M.objective_heads(config.objective)
  gen = M.generator_config(disc, config.model.generator_size) if heads.generator else None
  model = M.ElectraPretrainingModel(disc, gen, config.model.embedding_sharing, config.objective)
  return disc, train.restore_params(workdir, M.abstract_params(model))[1]


def test_mlm_checkpoint_has_no_generator(pretrained):
  workdir, config, _ = pretrained("mlm")
  _, params = _restore_pretraining_params(workdir, config)
  assert set(params) == {"embeddings", "discriminator"}
  assert {"mlm_predictions", "mlm_output_bias"} <= set(params["discriminator"])


def test_hf_export_of_a_gdes_run_folds_the_delta(pretrained, tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  from electra_jax import hf  # pylint: disable=g-import-not-at-top
  workdir, config, _ = pretrained("electra_15")
  _, params = _restore_pretraining_params(workdir, config)
  delta = params["embeddings_delta"]
  assert np.abs(delta["word_embeddings"]["embedding"]).max() > 0  # training moved it
  out = hf.export(workdir, str(tmp_path / "export"))
  load = lambda role: safetensors_numpy.load_file(os.path.join(out, role, "model.safetensors"))
  disc, gen = load("discriminator"), load("generator")
  for name, path in [("word_embeddings.weight", ("word_embeddings", "embedding")),
                     ("position_embeddings.weight", ("position_embeddings", "embedding")),
                     ("token_type_embeddings.weight", ("token_type_embeddings", "embedding")),
                     ("LayerNorm.weight", ("LayerNorm", "scale")),
                     ("LayerNorm.bias", ("LayerNorm", "bias"))]:
    shared = params["embeddings"][path[0]][path[1]]
    np.testing.assert_array_equal(disc[f"electra.embeddings.{name}"],
                                  shared + delta[path[0]][path[1]])
    np.testing.assert_array_equal(gen[f"electra.embeddings.{name}"], shared)
  np.testing.assert_array_equal(gen["generator_lm_head.weight"],
                                params["embeddings"]["word_embeddings"]["embedding"])


@pytest.mark.parametrize("name", ["replace_mlm", "all_tokens_mlm", "mlm"])
def test_hf_export_refuses_objectives_without_a_replaced_token_head(pretrained, tmp_path, name):
  from electra_jax import hf  # pylint: disable=g-import-not-at-top
  workdir, _, _ = pretrained(name)
  with pytest.raises(UserInputError) as e:
    hf.export(workdir, str(tmp_path / "export"))
  message = str(e.value)
  assert "\n" not in message
  assert ("hf export supports objectives electra and electra_15" in message
          and f"pretrained with objective={name}" in message)
  assert not os.listdir(tmp_path)


def test_finetune_init_from_an_mlm_run_drops_every_head(pretrained):
  from electra_jax import finetune  # pylint: disable=g-import-not-at-top
  workdir, config, _ = pretrained("mlm")
  _, params = _restore_pretraining_params(workdir, config)
  cfg, restored, _ = finetune.load_init(workdir)
  want = M.encoder_params_from_pretraining(params)
  # The same model; remat is fine-tuning's own choice (EncoderConfig's default).
  assert cfg == dataclasses.replace(M.encoder_config_from(config.model, cfg.vocab_size),
                                    remat=M.EncoderConfig.remat)
  assert jax.tree.structure(restored) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_encoder_restore_target_reads_a_gdes_run_folded(pretrained):
  from electra_jax import train  # pylint: disable=g-import-not-at-top
  workdir, config, _ = pretrained("electra_15")
  disc, params = _restore_pretraining_params(workdir, config)
  _, sub = train.restore_params(workdir, M.encoder_restore_target(disc, "gdes"))
  got = M.encoder_params_from_pretraining(sub)
  want = M.encoder_params_from_pretraining(params)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(
      got["embeddings"]["word_embeddings"]["embedding"],
      params["embeddings"]["word_embeddings"]["embedding"]
      + params["embeddings_delta"]["word_embeddings"]["embedding"])


def test_finetune_init_from_a_gdes_run_folds_the_delta(pretrained):
  from electra_jax import finetune  # pylint: disable=g-import-not-at-top
  workdir, config, _ = pretrained("electra_15")
  _, params = _restore_pretraining_params(workdir, config)
  _, restored, _ = finetune.load_init(workdir)
  np.testing.assert_array_equal(
      restored["embeddings"]["word_embeddings"]["embedding"],
      params["embeddings"]["word_embeddings"]["embedding"]
      + params["embeddings_delta"]["word_embeddings"]["embedding"])
