"""ELECTRA generator + discriminator in Flax linen.

Layout of the parameter tree (names follow Hugging Face's ELECTRA so export is a rename;
Flax Dense kernels are [in, out], i.e. transposed relative to torch Linear weights):

  embeddings/                       shared block (the discriminator's; also the generator's
    word_embeddings/embedding         when embedding_sharing is 'tied' or 'gdes')
    position_embeddings/embedding
    token_type_embeddings/embedding
    LayerNorm/{scale,bias}
  generator_embeddings/...          only with embedding_sharing='untied' (same structure)
  embeddings_delta/...              only with embedding_sharing='gdes' (same structure,
                                      zero-initialised; see below)
  generator/                        absent for objective='mlm' (no generator)
    embeddings_project/{kernel,bias}  only when embedding_size != hidden_size
    encoder/layer/...                 scan_layers=True: one subtree, leading axis = layer
    encoder/layer_0 .. layer_{N-1}/   scan_layers=False: one subtree per layer
    generator_predictions/{dense,LayerNorm}
    output_bias                       [vocab] (HF generator_lm_head.bias)
  discriminator/
    embeddings_project/..., encoder/...
    discriminator_predictions/{dense,dense_prediction}
                                      the replaced-token head (objectives electra,
                                      electra_15) or All-Tokens MLM's copy head
    mlm_predictions/{dense,LayerNorm} the main model's MLM head (objectives replace_mlm,
    mlm_output_bias                   all_tokens_mlm, mlm); same shapes as the generator's

Which heads exist follows the pretraining objective (`objective_heads`); the electra
layout is unchanged by the others.

Embedding sharing: 'tied' (the paper) -- one block for both towers; 'untied' -- the
generator has its own block; 'gdes' (DeBERTa-v3's gradient-disentangled embedding
sharing) -- the generator uses `embeddings`, the discriminator uses
stop_gradient(embeddings) + embeddings_delta for every parameter of the block, so the
discriminator's loss never moves the shared block.  Code that takes the discriminator out
of a pretraining tree folds the delta in (`encoder_params_from_pretraining`).

One encoder layer (post-LN BERT) holds
  attention/self/{query,key,value}, attention/output/{dense,LayerNorm},
  intermediate/dense, output/{dense,LayerNorm}.
`stack_layer_params` / `unstack_layer_params` convert between the two encoder layouts.

Numerics: parameters are float32; matmuls run in `EncoderConfig.dtype`; LayerNorm,
softmax, and returned logits are float32.

For fine-tuning, `ElectraEncoder` is a discriminator-only module whose tree is exactly
`{'embeddings', 'discriminator'}` of the pretraining tree minus the discriminator's heads
(and with a gdes delta folded in), see `encoder_params_from_pretraining`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
import numpy as np

from electra_jax import counter_rng
from electra_jax.errors import UserInputError

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
_REMAT_POLICIES = ('none', 'full', 'dots')
EMBEDDING_SHARING = ('tied', 'untied', 'gdes')
# Same "minus infinity" as jax.nn.dot_product_attention uses, so both paths agree.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Shape and numerics of one ELECTRA transformer (generator or discriminator)."""
  vocab_size: int
  hidden_size: int
  embedding_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12
  dtype: str = 'float32'   # compute dtype; params are always float32
  scan_layers: bool = True  # nn.scan over layers; False = unrolled layer_0..N-1
  remat: str = 'none'       # 'none' | 'full' | 'dots'

  def __post_init__(self):
    for name in ('vocab_size', 'hidden_size', 'embedding_size', 'num_layers',
                 'num_heads', 'intermediate_size', 'max_position_embeddings',
                 'type_vocab_size'):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise UserInputError(f'model {name} must be a positive integer, got {value!r}')
    if self.hidden_size % self.num_heads:
      raise UserInputError(
          f'model hidden_size {self.hidden_size} is not divisible by num_heads '
          f'{self.num_heads}; pick sizes where hidden_size % num_heads == 0')
    for name in ('dropout_rate', 'attention_dropout_rate'):
      value = getattr(self, name)
      if not 0.0 <= value < 1.0:
        raise UserInputError(f'model {name} must be in [0, 1), got {value!r}')
    if self.dtype not in _DTYPES:
      raise UserInputError(
          f'model dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}')
    if self.remat not in _REMAT_POLICIES:
      raise UserInputError(
          f'model remat must be one of {list(_REMAT_POLICIES)}, got {self.remat!r}')

  @property
  def compute_dtype(self):
    """The jnp dtype matmuls run in."""
    return _DTYPES[self.dtype]


# Discriminator sizes (DESIGN.md §1).  vocab_size is supplied by the tokenizer.
SIZES: dict[str, dict[str, int]] = {
    # A toy model for tests and CPU demos (not in the paper); matches config.py's 'tiny'.
    'tiny': dict(num_layers=2, hidden_size=64, embedding_size=32, num_heads=2,
                 intermediate_size=256),
    'small': dict(num_layers=12, hidden_size=256, embedding_size=128, num_heads=4,
                  intermediate_size=1024),
    'base': dict(num_layers=12, hidden_size=768, embedding_size=768, num_heads=12,
                 intermediate_size=3072),
    'large': dict(num_layers=24, hidden_size=1024, embedding_size=1024, num_heads=16,
                  intermediate_size=4096),
}
# Generator hidden size as a fraction of the discriminator's.
GENERATOR_SIZE: dict[str, float] = {'tiny': 0.25, 'small': 0.25, 'base': 1 / 3,
                                    'large': 0.25}


def generator_config(disc: EncoderConfig, generator_size: float) -> EncoderConfig:
  """The generator's config: same depth and embeddings as `disc`, narrower.

  hidden = int(disc.hidden_size * generator_size), heads = max(1, hidden // 64),
  ffn = 4 * hidden (the original ELECTRA rule).
  """
  if not 0.0 < generator_size <= 1.0:
    raise UserInputError(
        f'generator_size must be in (0, 1], got {generator_size!r}')
  # A tiny epsilon so 768 * (1/3) gives 256, not 255 (float rounding).
  hidden = int(disc.hidden_size * generator_size + 1e-6)
  if hidden < 1:
    raise UserInputError(
        f'generator_size {generator_size} gives a generator hidden size of 0 for '
        f'hidden_size {disc.hidden_size}; use a larger generator_size')
  return dataclasses.replace(disc, hidden_size=hidden, num_heads=max(1, hidden // 64),
                             intermediate_size=4 * hidden)


def encoder_config_from(model_cfg: Any, vocab_size: int) -> EncoderConfig:
  """Builds an EncoderConfig from a ConfigDict/mapping with the same field names.

  Keys that are not EncoderConfig fields (generator_size, embedding_sharing, ...) are
  ignored; fields absent from `model_cfg` keep their defaults.
  """
  kwargs = {}
  for field in dataclasses.fields(EncoderConfig):
    if field.name == 'vocab_size':
      continue
    if field.name in model_cfg and model_cfg[field.name] is not None:
      kwargs[field.name] = model_cfg[field.name]
  missing = [f.name for f in dataclasses.fields(EncoderConfig)
             if f.default is dataclasses.MISSING and f.name != 'vocab_size'
             and f.name not in kwargs]
  if missing:
    raise UserInputError(
        f'model config lacks {", ".join(missing)}; set them or start from a size in '
        f'{sorted(SIZES)}')
  return EncoderConfig(vocab_size=int(vocab_size), **kwargs)


@dataclasses.dataclass(frozen=True)
class Heads:
  """What a pretraining objective needs from the model.

  generator: a generator tower exists (its MLM head samples the replacements).
  discriminator: the discriminator tower's `Tower.head`: 'discriminator' (replaced-token
    head), 'mlm' (an MLM head) or 'copy_mlm' (both; the sigmoid head is All-Tokens
    MLM's copy probability).
  replaced_token_detection: `discriminator_predictions` is an RTD head, i.e. the tower
    is an HF ElectraForPreTraining.
  """
  generator: bool
  discriminator: str
  replaced_token_detection: bool


_OBJECTIVE_HEADS = {
    'electra': Heads(True, 'discriminator', True),
    'electra_15': Heads(True, 'discriminator', True),
    'replace_mlm': Heads(True, 'mlm', False),
    'all_tokens_mlm': Heads(True, 'copy_mlm', False),
    'mlm': Heads(False, 'mlm', False),
}
OBJECTIVES = tuple(_OBJECTIVE_HEADS)


def objective_heads(objective: str) -> Heads:
  """The heads of pretraining `objective`; a UserInputError for an unknown name."""
  if objective not in _OBJECTIVE_HEADS:
    raise UserInputError(
        f'objective must be one of {", ".join(OBJECTIVES)}, got {objective!r}')
  return _OBJECTIVE_HEADS[objective]


# ----------------------------------------------------------------------------- layers


def _kernel_init(cfg: EncoderConfig):
  return nn.initializers.truncated_normal(stddev=cfg.initializer_range)


class TokenDense(nn.Dense):
  """nn.Dense (same parameters) applied to the tokens as one [tokens, features] matrix.

  Flattening the leading dims first is free (a reshape), but it matters for the
  backward pass: the kernel gradient of a [B, L, H] input contracts two dims, which
  XLA:CPU lowers through layout copies at about half the speed of the 2-D matmul
  (benchmarks/train_step.md).
  """

  @nn.compact
  def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
    lead = inputs.shape[:-1]
    flat = inputs.reshape((-1, inputs.shape[-1])) if len(lead) != 1 else inputs
    return super().__call__(flat).reshape(lead + (self.features,))


def _dense(cfg: EncoderConfig, features: int, name: str) -> nn.Dense:
  return TokenDense(features, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                    kernel_init=_kernel_init(cfg), bias_init=nn.initializers.zeros,
                    name=name)


def _layer_norm(cfg: EncoderConfig, name: str) -> nn.LayerNorm:
  # float32 numerics regardless of the compute dtype.
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32,
                      param_dtype=jnp.float32, name=name)


def _gelu(x: jnp.ndarray) -> jnp.ndarray:
  # erf GELU, as BERT/ELECTRA; evaluated in float32 (CPUs lack bf16 arithmetic).
  return nn.gelu(x.astype(jnp.float32), approximate=False).astype(x.dtype)


def _dropout(module: nn.Module, x: jnp.ndarray, rate: float,
             deterministic: bool) -> jnp.ndarray:
  """Inverted dropout drawing from `module`'s 'dropout' rng stream."""
  if rate == 0.0 or deterministic:
    return x
  # Counter-hash mask (electra_jax/counter_rng.py): threefry per element cost ~15%
  # of a CPU training step.
  keep = counter_rng.keep_mask(module.make_rng('dropout'), rate, x.shape)
  # Scale in float32 (CPUs lack bf16 arithmetic; XLA fuses the casts elsewhere).
  scaled = x.astype(jnp.float32) * jnp.float32(1.0 / (1.0 - rate))
  return jnp.where(keep, scaled, 0.0).astype(x.dtype)


class Embeddings(nn.Module):
  """word + position + token-type embeddings, then LayerNorm (float32 output).

  Dropout is applied by the tower that consumes the output, so the block can be shared
  by a generator and a discriminator with different settings.  `zero_init` makes every
  parameter (LayerNorm scale included) start at zero: the GDES delta block.
  """
  cfg: EncoderConfig
  zero_init: bool = False

  def setup(self):
    cfg = self.cfg
    zeros = nn.initializers.zeros
    init = zeros if self.zero_init else nn.initializers.truncated_normal(
        stddev=cfg.initializer_range)
    embed = lambda n, name: nn.Embed(n, cfg.embedding_size, dtype=jnp.float32,
                                     param_dtype=jnp.float32, embedding_init=init,
                                     name=name)
    self.word_embeddings = embed(cfg.vocab_size, 'word_embeddings')
    self.position_embeddings = embed(cfg.max_position_embeddings, 'position_embeddings')
    self.token_type_embeddings = embed(cfg.type_vocab_size, 'token_type_embeddings')
    if self.zero_init:
      self.LayerNorm = nn.LayerNorm(  # pylint: disable=invalid-name
          epsilon=cfg.layer_norm_eps, dtype=jnp.float32, param_dtype=jnp.float32,
          scale_init=zeros, name='LayerNorm')
    else:
      self.LayerNorm = _layer_norm(cfg, 'LayerNorm')  # pylint: disable=invalid-name

  def __call__(self, input_ids: jnp.ndarray, segment_ids: jnp.ndarray) -> jnp.ndarray:
    seq_len = input_ids.shape[-1]
    if seq_len > self.cfg.max_position_embeddings:
      raise UserInputError(
          f'sequence length {seq_len} exceeds max_position_embeddings '
          f'{self.cfg.max_position_embeddings}; shorten max_seq_length')
    x = self.word_embeddings(input_ids)
    x = x + self.position_embeddings(jnp.arange(seq_len))[None]
    x = x + self.token_type_embeddings(segment_ids)
    return self.LayerNorm(x)

  def word_table(self) -> jnp.ndarray:
    """The [vocab, embedding_size] word table (the generator's output projection)."""
    return self.word_embeddings.embedding


class _Projection(nn.Module):
  """The kernel and bias of a dense layer (as nn.Dense names and initialises them)."""
  cfg: EncoderConfig
  in_features: int
  features: int

  @nn.compact
  def __call__(self) -> tuple[jnp.ndarray, jnp.ndarray]:
    kernel = self.param('kernel', _kernel_init(self.cfg), (self.in_features, self.features),
                        jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    return kernel, bias


class SelfAttention(nn.Module):
  """HF `attention.self`: query/key/value projections and scaled dot-product attention."""
  cfg: EncoderConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """x [B, L, H]; mask [B, 1, 1, L] bool (True = key may be attended). -> [B, L, H]."""
    cfg = self.cfg
    heads, head_dim = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    # One [tokens, hidden] x [hidden, 3 * hidden] matmul for the three projections (the
    # parameters stay HF's separate query/key/value kernels and biases).
    kernels, biases = zip(*(_Projection(cfg, x.shape[-1], cfg.hidden_size, name=n)()
                            for n in ('query', 'key', 'value')))
    dt = cfg.compute_dtype
    flat = x.reshape(-1, x.shape[-1]).astype(dt)
    qkv = flat @ jnp.concatenate(kernels, axis=1).astype(dt) + jnp.concatenate(biases).astype(dt)
    qkv = qkv.reshape(x.shape[:-1] + (3, heads, head_dim))
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    use_dropout = cfg.attention_dropout_rate > 0.0 and not self.deterministic
    if use_dropout:
      out = explicit_attention(q, k, v, mask, dropout=lambda p: _dropout(
          self, p, cfg.attention_dropout_rate, deterministic=False))
    else:
      out = jax.nn.dot_product_attention(q, k, v, mask=mask)
    return out.reshape(out.shape[:-2] + (cfg.hidden_size,))


def explicit_attention(q, k, v, mask, dropout=None):
  """softmax(q k^T / sqrt(d) masked) v with float32 logits and softmax.

  q, k, v: [B, L, heads, head_dim] in the compute dtype; mask broadcastable to
  [B, heads, L, L] (True = attend).  `dropout` (optional) is applied to the
  probabilities.  Same numerics as jax.nn.dot_product_attention's XLA path.
  """
  logits = jnp.einsum('btnh,bsnh->bnts', q, k, preferred_element_type=jnp.float32)
  logits = logits * jnp.float32(1.0 / np.sqrt(q.shape[-1]))
  logits = jnp.where(mask, logits, jnp.float32(_MASK_VALUE))
  probs = jax.nn.softmax(logits, axis=-1)
  if dropout is not None:
    probs = dropout(probs)
  # Named so the 'dots' remat policy keeps it (4 MiB per layer for Small at 32 x 128):
  # the output projection's kernel gradient needs it, and recomputing it costs the
  # whole attention forward again.
  return checkpoint_name(jnp.einsum('bnts,bsnh->btnh', probs.astype(v.dtype), v),
                         'attention_context')


class _DenseLayerNorm(nn.Module):
  """HF `*.output`: dense, dropout, residual add, LayerNorm (float32)."""
  cfg: EncoderConfig
  features: int
  deterministic: bool

  @nn.compact
  def __call__(self, x: jnp.ndarray, residual: jnp.ndarray) -> jnp.ndarray:
    y = _dense(self.cfg, self.features, 'dense')(x)
    y = _dropout(self, y, self.cfg.dropout_rate, self.deterministic)
    out = _layer_norm(self.cfg, 'LayerNorm')(
        residual.astype(jnp.float32) + y.astype(jnp.float32))
    return out.astype(self.cfg.compute_dtype)


class _Attention(nn.Module):
  cfg: EncoderConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x, mask):
    a = SelfAttention(self.cfg, self.deterministic, name='self')(x, mask)
    return _DenseLayerNorm(self.cfg, self.cfg.hidden_size, self.deterministic,
                           name='output')(a, x)


class _Intermediate(nn.Module):
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, x):
    return _gelu(_dense(self.cfg, self.cfg.intermediate_size, 'dense')(x))


class EncoderLayer(nn.Module):
  """One post-LN transformer layer.  Signature (carry, mask) -> (carry, None) for scan."""
  cfg: EncoderConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray):
    x = _Attention(self.cfg, self.deterministic, name='attention')(x, mask)
    h = _Intermediate(self.cfg, name='intermediate')(x)
    x = _DenseLayerNorm(self.cfg, self.cfg.hidden_size, self.deterministic,
                        name='output')(h, x)
    return x, None


def _remat_policy(name: str):
  if name == 'full':
    return None  # save nothing: recompute the whole layer in the backward pass
  # Save the outputs of matmuls without batch dims (the dense projections) and the
  # attention context; recompute the attention scores and softmax, GELU, LayerNorms and
  # dropout masks.  (Saving the probabilities or the GELU output too measured slower.)
  return jax.checkpoint_policies.save_from_both_policies(
      jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
      jax.checkpoint_policies.save_only_these_names('attention_context'))


class Encoder(nn.Module):
  """The stack of `num_layers` EncoderLayers (scanned or unrolled, optionally remat'd)."""
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray, *, deterministic: bool):
    cfg = self.cfg
    layer_cls = EncoderLayer
    if cfg.remat != 'none':
      layer_cls = nn.remat(layer_cls, policy=_remat_policy(cfg.remat),
                           prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      stack = nn.scan(layer_cls, variable_axes={'params': 0},
                      split_rngs={'params': True, 'dropout': True},
                      in_axes=nn.broadcast, length=cfg.num_layers)
      x, _ = stack(cfg, deterministic, name='layer')(x, mask)
    else:
      for i in range(cfg.num_layers):
        x, _ = layer_cls(cfg, deterministic, name=f'layer_{i}')(x, mask)
    return x


class DiscriminatorPredictions(nn.Module):
  """HF `discriminator_predictions`: dense(hidden) -> GELU -> dense(1)."""
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
    h = _gelu(_dense(self.cfg, self.cfg.hidden_size, 'dense')(h))
    logits = _dense(self.cfg, 1, 'dense_prediction')(h)
    return logits[..., 0].astype(jnp.float32)


class GeneratorPredictions(nn.Module):
  """HF `generator_predictions`: dense(embedding_size) -> GELU -> LayerNorm (float32)."""
  cfg: EncoderConfig

  @nn.compact
  def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
    h = _gelu(_dense(self.cfg, self.cfg.embedding_size, 'dense')(h))
    return _layer_norm(self.cfg, 'LayerNorm')(h)


_TOWER_HEADS = ('none', 'discriminator', 'generator', 'mlm', 'copy_mlm')


class Tower(nn.Module):
  """embeddings_project (if sizes differ) + encoder, plus optional heads.

  head: 'none' (hidden states only); 'discriminator' (`discriminator_predictions`, the
  replaced-token head); 'generator' (`generator_predictions` + `output_bias`); 'mlm'
  (the main model's MLM head `mlm_predictions` + `mlm_output_bias`, shaped like the
  generator's); 'copy_mlm' (both `discriminator_predictions` and the MLM head).
  """
  cfg: EncoderConfig
  head: str = 'none'

  def setup(self):
    cfg = self.cfg
    if self.head not in _TOWER_HEADS:
      raise ValueError(f'unknown head {self.head!r}')
    if cfg.embedding_size != cfg.hidden_size:
      self.embeddings_project = _dense(cfg, cfg.hidden_size, 'embeddings_project')
    self.encoder = Encoder(cfg)
    vocab_bias = lambda name: self.param(name, nn.initializers.zeros, (cfg.vocab_size,),
                                         jnp.float32)
    if self.head in ('discriminator', 'copy_mlm'):
      self.discriminator_predictions = DiscriminatorPredictions(cfg)
    if self.head == 'generator':
      self.generator_predictions = GeneratorPredictions(cfg)
      self.output_bias = vocab_bias('output_bias')
    if self.head in ('mlm', 'copy_mlm'):
      self.mlm_predictions = GeneratorPredictions(cfg)
      self.mlm_output_bias = vocab_bias('mlm_output_bias')

  def hidden(self, embedded: jnp.ndarray, input_mask: jnp.ndarray, *,
             deterministic: bool) -> jnp.ndarray:
    """embedded [B, L, E] float32 (post-LayerNorm) -> hidden states [B, L, H]."""
    cfg = self.cfg
    x = _dropout(self, embedded, cfg.dropout_rate, deterministic).astype(cfg.compute_dtype)
    if cfg.embedding_size != cfg.hidden_size:
      x = self.embeddings_project(x)
    mask = (input_mask > 0)[:, None, None, :]
    return self.encoder(x, mask, deterministic=deterministic)

  def _vocab_logits(self, h, predictions, bias, word_table):
    """h [B, N, H] -> predictions head -> tied output table + bias: [B, N, V] float32."""
    h = predictions(h).astype(self.cfg.compute_dtype)
    logits = jnp.einsum('bne,ve->bnv', h, word_table.astype(self.cfg.compute_dtype),
                        preferred_element_type=jnp.float32)
    return logits.astype(jnp.float32) + bias

  def discriminator_logits(self, embedded, input_mask, *, deterministic):
    h = self.hidden(embedded, input_mask, deterministic=deterministic)
    return self.discriminator_predictions(h)

  def generator_logits(self, embedded, input_mask, masked_positions, word_table, *,
                       deterministic):
    h = self.hidden(embedded, input_mask, deterministic=deterministic)
    h = _gather_positions(h, masked_positions)
    return self._vocab_logits(h, self.generator_predictions, self.output_bias, word_table)

  def mlm_logits(self, embedded, input_mask, masked_positions, word_table, *,
                 deterministic):
    """The main model's MLM logits [B, N, V] at `masked_positions` [B, N]."""
    h = self.hidden(embedded, input_mask, deterministic=deterministic)
    h = _gather_positions(h, masked_positions)
    return self._vocab_logits(h, self.mlm_predictions, self.mlm_output_bias, word_table)

  def copy_mlm_logits(self, embedded, input_mask, word_table, *, deterministic):
    """(MLM logits [B, L, V] at every position, copy logits [B, L]) from one pass."""
    h = self.hidden(embedded, input_mask, deterministic=deterministic)
    return (self._vocab_logits(h, self.mlm_predictions, self.mlm_output_bias, word_table),
            self.discriminator_predictions(h))


def _gather_positions(h: jnp.ndarray, positions: jnp.ndarray) -> jnp.ndarray:
  """h [B, L, H] at positions [B, N] -> [B, N, H]."""
  return jnp.take_along_axis(h, positions[..., None].astype(jnp.int32), axis=1)


def fold_embeddings_delta(shared: Mapping[str, Any], delta: Mapping[str, Any]) -> Any:
  """The discriminator's GDES embedding block: shared + delta, leaf by leaf.

  Works on jax or numpy trees; in the model the shared leaves are stop_gradient'ed first.
  """
  return jax.tree_util.tree_map(lambda s, d: s + d, shared, delta)


def _check_sharing(disc: EncoderConfig, gen: EncoderConfig | None, embedding_sharing: str,
                   objective: str):
  if embedding_sharing not in EMBEDDING_SHARING:
    raise UserInputError(
        f'embedding_sharing must be one of {list(EMBEDDING_SHARING)}, got '
        f'{embedding_sharing!r}')
  if not objective_heads(objective).generator:
    if embedding_sharing != 'tied':
      raise UserInputError(
          f"objective {objective!r} has no generator, so embedding_sharing must be 'tied' "
          f'(got {embedding_sharing!r})')
    return
  if gen is None:
    raise ValueError(f'objective {objective!r} needs a generator config')
  if embedding_sharing in ('tied', 'gdes'):
    for name in ('vocab_size', 'embedding_size', 'max_position_embeddings',
                 'type_vocab_size', 'layer_norm_eps', 'initializer_range'):
      if getattr(disc, name) != getattr(gen, name):
        raise UserInputError(
            f'{embedding_sharing} embeddings need the same {name} in generator and '
            f'discriminator ({getattr(gen, name)} vs {getattr(disc, name)}); make them '
            "equal or use embedding_sharing='untied'")


class ElectraPretrainingModel(nn.Module):
  """Generator + discriminator ('main model') for one pretraining objective.

  disc: the discriminator (main model) tower; gen: the generator tower (ignored, and may
  be None, for objective='mlm', which has no generator).  embedding_sharing: 'tied',
  'untied' or 'gdes' (see the module docstring).  objective: one of `OBJECTIVES`; it
  picks the heads (`objective_heads`).
  """
  disc: EncoderConfig
  gen: EncoderConfig | None
  embedding_sharing: str = 'tied'
  objective: str = 'electra'

  def setup(self):
    heads = objective_heads(self.objective)
    _check_sharing(self.disc, self.gen, self.embedding_sharing, self.objective)
    self.embeddings = Embeddings(self.disc)
    if self.embedding_sharing == 'untied':
      self.generator_embeddings = Embeddings(self.gen)
    if self.embedding_sharing == 'gdes':
      self.embeddings_delta = Embeddings(self.disc, zero_init=True)
    if heads.generator:
      self.generator = Tower(self.gen, head='generator')
    self.discriminator = Tower(self.disc, head=heads.discriminator)

  @property
  def heads(self) -> Heads:
    return objective_heads(self.objective)

  def _gen_embeddings(self) -> Embeddings:
    if self.embedding_sharing == 'untied':
      return self.generator_embeddings
    return self.embeddings

  def _disc_embed(self, input_ids, segment_ids) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(embedded [B, L, E], word table [V, E]) of the discriminator's embedding block."""
    if self.embedding_sharing != 'gdes':
      return self.embeddings(input_ids, segment_ids), self.embeddings.word_table()
    if self.is_initializing():  # create both blocks' params before reading them
      self.embeddings(input_ids, segment_ids)
      self.embeddings_delta(input_ids, segment_ids)
    folded = fold_embeddings_delta(
        jax.lax.stop_gradient(self.embeddings.variables['params']),
        self.embeddings_delta.variables['params'])
    embedded = Embeddings(self.disc, parent=None).apply({'params': folded}, input_ids,
                                                         segment_ids)
    return embedded, folded['word_embeddings']['embedding']

  def generator_logits(self, input_ids, segment_ids, input_mask, masked_positions, *,
                       deterministic: bool) -> jnp.ndarray:
    """MLM logits [B, N, V] float32 at `masked_positions` [B, N] only."""
    emb = self._gen_embeddings()
    return self.generator.generator_logits(
        emb(input_ids, segment_ids), input_mask, masked_positions, emb.word_table(),
        deterministic=deterministic)

  def discriminator_logits(self, input_ids, segment_ids, input_mask, *,
                           deterministic: bool) -> jnp.ndarray:
    """Replaced-token logits [B, L] float32 (sigmoid > 0.5 means 'replaced').

    For all_tokens_mlm these are the copy logits (sigmoid = copy probability).
    """
    embedded, _ = self._disc_embed(input_ids, segment_ids)
    return self.discriminator.discriminator_logits(embedded, input_mask,
                                                   deterministic=deterministic)

  def model_mlm_logits(self, input_ids, segment_ids, input_mask, masked_positions, *,
                       deterministic: bool) -> jnp.ndarray:
    """The main model's MLM logits [B, N, V] float32 at `masked_positions` [B, N]."""
    embedded, table = self._disc_embed(input_ids, segment_ids)
    return self.discriminator.mlm_logits(embedded, input_mask, masked_positions, table,
                                         deterministic=deterministic)

  def all_tokens_logits(self, input_ids, segment_ids, input_mask, *,
                        deterministic: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
    """All-Tokens MLM: (MLM logits [B, L, V], copy logits [B, L]), both float32."""
    embedded, table = self._disc_embed(input_ids, segment_ids)
    return self.discriminator.copy_mlm_logits(embedded, input_mask, table,
                                              deterministic=deterministic)

  def discriminator_hidden(self, input_ids, segment_ids, input_mask, *,
                           deterministic: bool) -> jnp.ndarray:
    """Final discriminator hidden states [B, L, H] in the compute dtype."""
    embedded, _ = self._disc_embed(input_ids, segment_ids)
    return self.discriminator.hidden(embedded, input_mask, deterministic=deterministic)

  def __call__(self, input_ids, segment_ids, input_mask, masked_positions, *,
               deterministic: bool = True) -> tuple[jnp.ndarray, ...]:
    """Every head's output; used for init.

    In order, those that exist: generator logits [B, N, V], discriminator (RTD or copy)
    logits [B, L], main-model MLM logits [B, N, V].  For 'electra' and 'electra_15' this
    is (generator_logits, discriminator_logits).
    """
    heads = self.heads
    outputs = []
    if heads.generator:
      outputs.append(self.generator_logits(input_ids, segment_ids, input_mask,
                                           masked_positions, deterministic=deterministic))
    if heads.discriminator in ('discriminator', 'copy_mlm'):
      outputs.append(self.discriminator_logits(input_ids, segment_ids, input_mask,
                                               deterministic=deterministic))
    if heads.discriminator in ('mlm', 'copy_mlm'):
      outputs.append(self.model_mlm_logits(input_ids, segment_ids, input_mask,
                                           masked_positions, deterministic=deterministic))
    return tuple(outputs)


class ElectraEncoder(nn.Module):
  """The discriminator without its head, for fine-tuning.

  Its param tree is {'embeddings', 'discriminator': {embeddings_project?, encoder}}: the
  pretraining tree minus 'generator', 'generator_embeddings' and the discriminator's
  heads, with a gdes delta folded in (see `encoder_params_from_pretraining`).
  """
  cfg: EncoderConfig

  def setup(self):
    self.embeddings = Embeddings(self.cfg)
    self.discriminator = Tower(self.cfg, head='none')

  def __call__(self, input_ids, segment_ids, input_mask, *,
               deterministic: bool = True) -> jnp.ndarray:
    """Final hidden states [B, L, H] in the compute dtype."""
    return self.discriminator.hidden(self.embeddings(input_ids, segment_ids), input_mask,
                                     deterministic=deterministic)


# ----------------------------------------------------------------------------- helpers


def _unwrap(tree: Mapping[str, Any]) -> Mapping[str, Any]:
  """Accepts either a variables dict {'params': ...} or the params tree itself."""
  if isinstance(tree, Mapping) and set(tree.keys()) == {'params'}:
    return tree['params']
  return tree


def count_params(tree: Any) -> int:
  """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return int(sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree)))


def discriminator_param_count(params: Mapping[str, Any]) -> int:
  """Parameters of the discriminator (main model): 'embeddings' + 'discriminator'.

  Its heads are included (RTD, copy or MLM head, whichever the objective has).  With
  embedding_sharing='gdes' the discriminator's block is embeddings + embeddings_delta
  folded into one block of the same size, so the delta is not counted twice.
  """
  params = _unwrap(params)
  return count_params(params['embeddings']) + count_params(params['discriminator'])


# The discriminator's heads: pretraining-only, dropped for fine-tuning.
_DISCRIMINATOR_HEADS = ('discriminator_predictions', 'mlm_predictions', 'mlm_output_bias')


def encoder_params_from_pretraining(params: Mapping[str, Any]) -> dict[str, Any]:
  """The ElectraEncoder params inside a pretraining params tree.

  Drops every head of the discriminator and folds a gdes 'embeddings_delta' into
  'embeddings' (shared + delta, a new array); otherwise no array is copied.  `params`
  may be a full pretraining tree or the part `encoder_restore_target` describes.
  """
  params = _unwrap(params)
  disc = {k: v for k, v in params['discriminator'].items()
          if k not in _DISCRIMINATOR_HEADS}
  embeddings = params['embeddings']
  if 'embeddings_delta' in params:
    embeddings = fold_embeddings_delta(embeddings, params['embeddings_delta'])
  return {'embeddings': embeddings, 'discriminator': disc}


def encoder_restore_target(cfg: EncoderConfig, embedding_sharing: str = 'tied') -> dict:
  """The abstract part of a pretraining params tree that a fine-tuning init reads.

  ElectraEncoder's tree, plus 'embeddings_delta' for embedding_sharing='gdes'.  Restore
  it from a checkpoint (partial restore), then `encoder_params_from_pretraining` gives
  the ElectraEncoder params.
  """
  if embedding_sharing not in EMBEDDING_SHARING:
    raise UserInputError(
        f'embedding_sharing must be one of {list(EMBEDDING_SHARING)}, got '
        f'{embedding_sharing!r}')
  target = dict(abstract_params(ElectraEncoder(cfg)))
  if embedding_sharing == 'gdes':
    target['embeddings_delta'] = target['embeddings']
  return target


def abstract_params(model: nn.Module, batch_size: int = 1, seq_len: int = 8):
  """The params tree of `model` as ShapeDtypeStructs (jax.eval_shape, no allocation).

  Works for ElectraPretrainingModel and ElectraEncoder.  Returns the inner tree (what
  `model.init(...)['params']` would hold).
  """
  ids = jnp.zeros((batch_size, seq_len), jnp.int32)
  if isinstance(model, ElectraEncoder):
    args = (ids, ids, jnp.ones_like(ids))
  else:
    args = (ids, ids, jnp.ones_like(ids), jnp.zeros((batch_size, 1), jnp.int32))
  variables = jax.eval_shape(lambda: model.init({'params': jax.random.key(0)}, *args))
  return variables['params']


def unstack_layer_params(encoder_params: Mapping[str, Any]) -> dict[str, Any]:
  """encoder/{layer: stacked [L, ...]} -> encoder/{layer_0, ..., layer_{L-1}}."""
  stacked = encoder_params['layer']
  num = jax.tree_util.tree_leaves(stacked)[0].shape[0]
  return {f'layer_{i}': jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
          for i in range(num)}


def stack_layer_params(encoder_params: Mapping[str, Any]) -> dict[str, Any]:
  """encoder/{layer_0, ..., layer_{L-1}} -> encoder/{layer: stacked [L, ...]}."""
  num = len(encoder_params)
  layers = [encoder_params[f'layer_{i}'] for i in range(num)]
  return {'layer': jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)}
