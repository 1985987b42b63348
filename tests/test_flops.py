"""electra_jax.flops against a hand count and against what XLA actually runs.

Three independent checks:
  * a hand calculation for ELECTRA-Small (the numbers are written out below);
  * the exact matmul FLOPs of the lowered program: every `stablehlo.dot_general` of
    the jitted loss (forward) and of its gradient (training step), 2 x output size x
    contracted size, must equal the analytic count for every objective (plus, exactly,
    the streamed generator output layer's padding and recomputation);
  * XLA's own `cost_analysis()['flops']` of the compiled forward, which also counts
    elementwise work (GELU, LayerNorm, softmax, biases), must lie a few percent above
    the analytic matmul count on a matmul-dominated model.
Models are unrolled (scan_layers=False): XLA counts a scanned loop body once.
"""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import pytest

from electra_jax import flops
from electra_jax import model as model_lib
from electra_jax import objective, vocab_head
from electra_jax.config import pretrain_config
from electra_jax.errors import UserInputError

_DOT = re.compile(r"stablehlo\.dot_general.*contracting_dims = \[([\d, ]*)\] x .*?:\s*"
                  r"\((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)")


def _dims(tensor_type: str) -> list[int]:
  return [int(d) for d in re.findall(r"(\d+)x", tensor_type)]


def lowered_matmul_flops(lowered) -> int:
  """2 x output elements x contracted size, summed over the program's dot_generals."""
  total, dots = 0, 0
  for line in lowered.as_text().splitlines():
    if "stablehlo.dot_general" not in line:
      continue
    m = _DOT.search(line)
    assert m, f"unparsed dot_general: {line.strip()[:200]}"
    lhs, out = _dims(m.group(2)), _dims(m.group(4))
    contracted = math.prod(lhs[int(i)] for i in m.group(1).split(","))
    total += 2 * math.prod(out) * contracted
    dots += 1
  assert dots > 0
  return total


def _setup(objective_name: str, hidden=64, embedding=32, layers=2, vocab=500, seq_len=32,
           batch=4, num_predictions=6, generator_size=0.5):
  """(model, abstract params, batch, settings, disc cfg, gen cfg) of an unrolled model."""
  disc = model_lib.EncoderConfig(
      vocab_size=vocab, hidden_size=hidden, embedding_size=embedding, num_layers=layers,
      num_heads=max(1, hidden // 64), intermediate_size=4 * hidden, dropout_rate=0.0,
      attention_dropout_rate=0.0, scan_layers=False)
  gen = model_lib.generator_config(disc, generator_size)
  m = model_lib.ElectraPretrainingModel(disc=disc, gen=gen, objective=objective_name)
  ids = jnp.ones((batch, seq_len), jnp.int32)
  positions = jnp.zeros((batch, num_predictions), jnp.int32)
  params = jax.eval_shape(
      lambda: m.init(jax.random.key(0), ids, ids, ids, positions))["params"]
  data = {"input_ids": ids, "input_mask": ids, "segment_ids": ids}
  settings = objective.ObjectiveSettings(pad_id=0, cls_id=1, sep_id=2, mask_id=3,
                                         vocab_size=vocab, max_predictions=num_predictions)
  return m, params, data, settings, disc, gen


def _count(objective_name, disc, gen, data, settings, training):
  b, length = data["input_ids"].shape
  return flops.step_flops(objective_name, disc, gen, batch_size=b, seq_len=length,
                          num_predictions=settings.max_predictions, training=training)


def test_hand_count_electra_small():
  """ELECTRA-Small, seq 128, vocab 30522, batch 128: written out by hand."""
  c = pretrain_config("small")
  count = flops.train_flops_per_step(c, 30522)
  # Discriminator per token: 12 layers x (8*256^2 + 4*256*1024 + 4*128*256)
  #   = 12 x (524,288 + 1,048,576 + 131,072) = 20,447,232; embeddings_project
  #   2*128*256 = 65,536; RTD head 2*256^2 + 2*256 = 131,584.
  disc_per_token = 20_447_232 + 65_536 + 131_584
  # Generator (hidden 64, ffn 256) per token: 12 x (32,768 + 65,536 + 32,768)
  #   = 1,572,864; embeddings_project 2*128*64 = 16,384.
  gen_per_token = 1_572_864 + 16_384
  # Generator MLM head per masked slot: 2*64*128 + 2*128*30522 = 7,830,016;
  # N = int(0.155 * 128) = 19 slots per sequence.
  per_sequence = 128 * (disc_per_token + gen_per_token) + 19 * 7_830_016
  assert per_sequence == 2_994_671_104
  assert count["total"] == 3 * 128 * per_sequence == 1_149_953_703_936
  assert count["discriminator/attention_scores"] == 3 * 128 * 128 * 12 * 2 * 128 * 256
  assert count["generator/mlm_head"] == 3 * 128 * 19 * 7_830_016
  assert sum(v for k, v in count.items() if k != "total") == count["total"]
  # ~70 MFLOP per token, in line with DESIGN.md's ~72 for the HF step.
  assert flops.train_flops_per_token(c, 30522) == pytest.approx(70.19e6, rel=1e-3)


def test_objectives_differ_where_they_should():
  c = pretrain_config("base")
  per = {}
  for name in flops.OBJECTIVES:
    c.objective = name
    per[name] = flops.train_flops_per_step(c, 30522)
  assert per["electra"] == per["electra_15"]  # the loss changes, not the computation
  assert not any(k.startswith("generator/") for k in per["mlm"])
  # mlm = replace_mlm without its generator.
  gen = sum(v for k, v in per["replace_mlm"].items() if k.startswith("generator/"))
  assert per["mlm"]["total"] == per["replace_mlm"]["total"] - gen
  # All-tokens MLM pays the vocab projection at all 512 positions, not 79.
  assert per["all_tokens_mlm"]["discriminator/mlm_head"] == (
      per["replace_mlm"]["discriminator/mlm_head"] * 512 // 79)
  # ELECTRA-Base's 766k steps: ~6.7e19 FLOPs (the paper lists 6.4e19).
  assert per["electra"]["total"] * 766_000 == pytest.approx(6.7e19, rel=0.02)
  assert flops.tower_totals(per["electra"])["generator"] + flops.tower_totals(
      per["electra"])["discriminator"] == per["electra"]["total"]


def test_config_rules_follow_the_model():
  c = pretrain_config("tiny")
  c.pretrain.max_predictions_per_seq = 7
  c.model.embedding_size = c.model.hidden_size  # no embeddings_project
  count = flops.forward_flops_per_step(c, 1000)
  assert "discriminator/embeddings_project" not in count
  disc, gen, b, length, n = flops.config_shapes(c, 1000)
  assert (b, length, n) == (c.train.batch_size, c.data.max_seq_length, 7)
  assert gen.hidden_size == 16 and gen.intermediate_size == 64  # 64 * 0.25, 4x
  assert count["generator/mlm_head"] == b * 7 * (2 * 16 * 64 + 2 * 64 * 1000)
  # A plain dict (a workdir's config.json) works the same.
  assert flops.forward_flops_per_step(c.to_dict(), 1000) == count
  c.objective = "nope"
  with pytest.raises(UserInputError, match="no FLOP count for objective 'nope'"):
    flops.train_flops_per_step(c, 1000)


def test_objective_list_matches_the_model():
  assert set(flops.OBJECTIVES) == set(model_lib.OBJECTIVES)


@pytest.mark.parametrize("name", flops.OBJECTIVES)
def test_matmuls_of_the_lowered_step_match_exactly(name):
  """Forward (the loss) and training step (its gradient): every matmul XLA is given."""
  m, params, data, s, disc, gen = _setup(name)

  def loss(p, batch, key):
    return objective.pretraining_loss(p, batch, key, model=m, s=s, deterministic=True)[0]

  key = jax.random.key(0)
  forward = jax.jit(loss).lower(params, data, key)
  assert lowered_matmul_flops(forward) == (_count(name, disc, gen, data, s, False)["total"]
                                           + _streamed_head_extra(name, gen, data, s, False))
  step = jax.jit(jax.grad(loss)).lower(params, data, key)
  assert lowered_matmul_flops(step) == (_count(name, disc, gen, data, s, True)["total"]
                                        + _streamed_head_extra(name, gen, data, s, True))


def _streamed_head_extra(name, gen, data, s, training):
  """Matmul FLOPs the generator's streamed output layer runs beyond the model's count.

  vocab_head pads the vocabulary to whole chunks, and its backward pass recomputes each
  chunk's logits: (padding) forward, plus (whole padded vocabulary) recomputed and
  (padding) in the two gradient matmuls when training.
  """
  if name == "mlm":  # no generator
    return 0
  vocab = gen.vocab_size
  chunk, chunks = vocab_head.chunking(vocab, s.vocab_chunk)
  padded = chunks * chunk
  per_entry = 2 * data["input_ids"].shape[0] * s.max_predictions * gen.embedding_size
  if not training:
    return per_entry * (padded - vocab)
  return per_entry * (3 * (padded - vocab) + padded)


def test_xla_cost_analysis_of_the_forward_is_a_few_percent_above():
  """XLA's compiled-forward FLOPs add elementwise work to the matmuls: 0-8% here."""
  m, params, data, s, disc, gen = _setup("electra", hidden=256, embedding=128, vocab=1000)
  positions = jnp.zeros((4, s.max_predictions), jnp.int32)

  def forward(p, ids, positions):
    return m.apply({"params": p}, ids, ids, ids, positions)

  compiled = jax.jit(forward).lower(params, data["input_ids"], positions).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
    analysis = analysis[0]
  analytic = _count("electra", disc, gen, data, s, False)["total"]
  assert 1.0 <= analysis["flops"] / analytic <= 1.08, (analysis["flops"], analytic)


def test_step_flops_training_is_three_forwards():
  _, _, data, s, disc, gen = _setup("all_tokens_mlm")
  fwd = _count("all_tokens_mlm", disc, gen, data, s, False)
  train = _count("all_tokens_mlm", disc, gen, data, s, True)
  assert train == {k: 3 * v for k, v in fwd.items()}
  assert set(fwd) >= {"discriminator/copy_head", "discriminator/mlm_head",
                      "generator/mlm_head", "discriminator/attention_values"}


def test_unused_generator_config_is_ignored_for_mlm():
  _, _, data, s, disc, _ = _setup("mlm")
  count = flops.step_flops("mlm", disc, None, batch_size=2, seq_len=8, num_predictions=3)
  assert count["discriminator/mlm_head"] == 3 * 2 * 3 * (
      2 * disc.hidden_size * disc.embedding_size + 2 * disc.embedding_size * disc.vocab_size)
  with pytest.raises(ValueError, match="needs a generator"):
    flops.step_flops("electra", disc, None, batch_size=2, seq_len=8, num_predictions=3)
  # A generator narrower than the discriminator but otherwise the same rules.
  gen = dataclasses.replace(disc, hidden_size=32, intermediate_size=128, num_heads=1)
  assert flops.step_flops("electra", disc, gen, batch_size=2, seq_len=8,
                          num_predictions=3)["generator/ffn"] == 3 * 16 * 2 * 4 * 32 * 128
