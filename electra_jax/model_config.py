"""Encoder configuration for the ELECTRA models: `EncoderConfig`, the model sizes, the
generator's config rule, and which heads each pretraining objective needs (`Heads`).

No Flax here; `electra_jax.model` re-exports every public name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from electra_jax.errors import UserInputError

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
_REMAT_POLICIES = ('none', 'full', 'dots')
EMBEDDING_SHARING = ('tied', 'untied', 'gdes')


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
  # The devices the model is built for ('' = any); `for_platform` sets it.  On 'cpu' the
  # attention of a bfloat16 model runs in float32 and the query/key/value projection has
  # its own VJP (model_layers.SelfAttention).
  platform: str = ''
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

  @property
  def attention_compute_dtype(self):
    """The jnp dtype of the attention's query, key, value and matmuls: float32 on CPU.

    XLA:CPU runs bfloat16 batched matmuls (the attention's) in float32 anyway, after
    converting the operands, so bfloat16 attention there only adds conversion passes
    and rounding (benchmarks/train_step.md).  Accelerators keep `dtype`.
    """
    return jnp.float32 if self.platform == 'cpu' else self.compute_dtype


def for_platform(cfg: EncoderConfig, platform: str) -> EncoderConfig:
  """`cfg` built for devices of `platform` (the same parameters and model either way)."""
  return dataclasses.replace(cfg, platform=platform)


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
