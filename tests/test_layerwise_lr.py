"""Layer-wise lr decay: the per-parameter multiplier table for both rules and layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from electra_jax import optim
from electra_jax.finetune import SequenceClassifier
from electra_jax.model import SIZES, EncoderConfig

DECAY = 0.8
# The parameters of one encoder layer (HF ELECTRA names), 16 leaves.
LAYER_LEAVES = [f"{m}/{leaf}" for m in (
    "attention/self/query", "attention/self/key", "attention/self/value",
    "attention/output/dense", "intermediate/dense", "output/dense")
                for leaf in ("kernel", "bias")] + [
    f"{m}/LayerNorm/{leaf}" for m in ("attention/output", "output")
    for leaf in ("scale", "bias")]
EMBEDDING_LEAVES = [
    "electra/embeddings/word_embeddings/embedding",
    "electra/embeddings/position_embeddings/embedding",
    "electra/embeddings/token_type_embeddings/embedding",
    "electra/embeddings/LayerNorm/scale", "electra/embeddings/LayerNorm/bias",
    "electra/discriminator/embeddings_project/kernel",
    "electra/discriminator/embeddings_project/bias"]
HEAD_LEAVES = ["classifier/kernel", "classifier/bias"]

# Multipliers for a 2-layer model with decay 0.8, written out by hand.
#                 embeddings     layer 0  layer 1  head
INTENDED = dict(emb=0.8 ** 3, l0=0.8 ** 2, l1=0.8, head=1.0)   # 0.512 0.64 0.8 1
ORIGINAL = dict(emb=0.8 ** 4, l0=0.8 ** 3, l1=0.8 ** 2, head=1.0)  # top layer gets decay^2


def _params(scan_layers: bool):
  cfg = EncoderConfig(vocab_size=50, scan_layers=scan_layers, **SIZES["tiny"])
  assert cfg.num_layers == 2
  ids = jnp.zeros((1, 8), jnp.int32)
  model = SequenceClassifier(cfg, num_labels=3)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), ids, ids, ids + 1))["params"]


def _expected_table(scan_layers: bool, f: dict) -> dict[str, float]:
  table = {name: f["emb"] for name in EMBEDDING_LEAVES}
  table.update({name: f["head"] for name in HEAD_LEAVES})
  for leaf in LAYER_LEAVES:
    for i, key in enumerate(("l0", "l1")):
      name = (f"electra/discriminator/encoder/layer/{leaf}[{i}]" if scan_layers else
              f"electra/discriminator/encoder/layer_{i}/{leaf}")
      table[name] = f[key]
  return table


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "unrolled"])
@pytest.mark.parametrize("compat,expected", [(False, INTENDED), (True, ORIGINAL)],
                         ids=["intended", "original"])
def test_lr_table(scan_layers, compat, expected):
  table = optim.layerwise_lr_table(_params(scan_layers), 2, DECAY, compat=compat)
  want = _expected_table(scan_layers, expected)
  assert sorted(table) == sorted(want)  # every parameter has a multiplier, none extra
  for name, value in want.items():
    assert table[name] == pytest.approx(value, rel=1e-6), name


def test_original_rule_is_intended_times_one_more_decay_except_head():
  params = _params(True)
  intended = optim.layerwise_lr_table(params, 2, DECAY)
  original = optim.layerwise_lr_table(params, 2, DECAY, compat=True)
  for name, v in intended.items():
    extra = 1.0 if name.startswith("classifier/") else DECAY
    assert original[name] == pytest.approx(v * extra, rel=1e-6), name


def test_scanned_factors_broadcast_along_the_layer_axis():
  params = _params(True)
  factors = optim.layerwise_lr_factors(params, 2, DECAY)
  kernel = factors["electra"]["discriminator"]["encoder"]["layer"]["intermediate"]["dense"]
  assert kernel["kernel"].shape == (2, 1, 1)
  assert kernel["bias"].shape == (2, 1)
  np.testing.assert_allclose(kernel["kernel"].reshape(-1), [0.64, 0.8], rtol=1e-6)
  assert factors["classifier"]["kernel"].shape == ()


@pytest.mark.parametrize("decay", [0.0, 1.0, -1.0])
def test_decay_off_gives_ones(decay):
  table = optim.layerwise_lr_table(_params(False), 2, decay, compat=True)
  assert set(table.values()) == {1.0}


def test_depth_mismatches_are_refused():
  with pytest.raises(ValueError, match="layer 1 but num_layers is 1"):
    optim.layerwise_lr_factors(_params(False), 1, DECAY)
  with pytest.raises(ValueError, match="leading layer axis of 3"):
    optim.layerwise_lr_factors(_params(True), 3, DECAY)


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "unrolled"])
def test_factors_set_the_effective_learning_rates(scan_layers):
  """One Adam step with unit gradients moves each parameter by lr * factor * const."""
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _params(scan_layers))
  factors = optim.layerwise_lr_factors(params, 2, DECAY)
  lr = 1e-2
  tx = optim.electra_adamw(lambda count: lr, weight_decay=0.0, clip_norm=0.0,
                           factors=factors)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  # First step without bias correction: m = 0.1 g, v = 0.001 g^2 -> 0.1 / sqrt(0.001).
  step = 0.1 / (np.sqrt(0.001) + 1e-6)
  table = optim.layerwise_lr_table(params, 2, DECAY)
  for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
    name = "/".join(k.key for k in path)
    u = np.asarray(u)
    rows = [u[i] for i in range(2)] if name.endswith(
        tuple(LAYER_LEAVES)) and scan_layers else [u]
    for i, row in enumerate(rows):
      key = f"{name}[{i}]" if len(rows) > 1 else name
      np.testing.assert_allclose(row, -lr * step * table[key], rtol=1e-5, err_msg=key)
