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

Code layout: this module holds the towers and the two models (`Tower`,
`ElectraPretrainingModel`, `ElectraEncoder`) and the helpers that build them
(`abstract_params`, `encoder_restore_target`); the rest lives in
  model_config.py   EncoderConfig, SIZES, generator_config, objective heads (`Heads`)
  model_layers.py   embeddings, attention, encoder layers and stack, prediction heads
  model_params.py   param counts, the GDES fold, encoder params from a pretraining tree,
                    scanned <-> unrolled layer layouts
and every public name of those is importable from here too.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from electra_jax.errors import UserInputError
from electra_jax.model_config import (EMBEDDING_SHARING, GENERATOR_SIZE, OBJECTIVES, SIZES,
                                      EncoderConfig, Heads, encoder_config_from,
                                      generator_config, objective_heads)
from electra_jax.model_layers import (DiscriminatorPredictions, Embeddings, Encoder,
                                      EncoderLayer, GeneratorPredictions, SelfAttention,
                                      TokenDense, _dense, _dropout, explicit_attention)
from electra_jax.model_params import (count_params, discriminator_param_count,
                                      encoder_params_from_pretraining,
                                      fold_embeddings_delta, stack_layer_params,
                                      unstack_layer_params)
from electra_jax.vocab_head import VocabProjection

__all__ = [
    # model_config
    'EMBEDDING_SHARING', 'GENERATOR_SIZE', 'OBJECTIVES', 'SIZES', 'EncoderConfig', 'Heads',
    'encoder_config_from', 'generator_config', 'objective_heads',
    # model_layers
    'DiscriminatorPredictions', 'Embeddings', 'Encoder', 'EncoderLayer',
    'GeneratorPredictions', 'SelfAttention', 'TokenDense', 'explicit_attention',
    # model_params
    'count_params', 'discriminator_param_count', 'encoder_params_from_pretraining',
    'fold_embeddings_delta', 'stack_layer_params', 'unstack_layer_params',
    # this module
    'ElectraEncoder', 'ElectraPretrainingModel', 'Tower', 'abstract_params',
    'encoder_restore_target',
]


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

  def _vocab_projection(self, h, predictions, bias, word_table) -> VocabProjection:
    """h [B, N, H] -> predictions head -> (hidden, tied output table, bias)."""
    cdt = self.cfg.compute_dtype
    return VocabProjection(predictions(h).astype(cdt), word_table.astype(cdt), bias)

  def _vocab_logits(self, h, predictions, bias, word_table):
    """h [B, N, H] -> predictions head -> tied output table + bias: [B, N, V] float32."""
    return self._vocab_projection(h, predictions, bias, word_table).logits()

  def discriminator_logits(self, embedded, input_mask, *, deterministic):
    h = self.hidden(embedded, input_mask, deterministic=deterministic)
    return self.discriminator_predictions(h)

  def generator_projection(self, embedded, input_mask, masked_positions, word_table, *,
                           deterministic) -> VocabProjection:
    h = self.hidden(embedded, input_mask, deterministic=deterministic)
    h = _gather_positions(h, masked_positions)
    return self._vocab_projection(h, self.generator_predictions, self.output_bias,
                                  word_table)

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

  def generator_projection(self, input_ids, segment_ids, input_mask, masked_positions, *,
                           deterministic: bool) -> VocabProjection:
    """The generator's output layer at `masked_positions` [B, N] only: hidden [B, N, E],
    tied word table and output bias (electra_jax/vocab_head.py streams the logits)."""
    emb = self._gen_embeddings()
    return self.generator.generator_projection(
        emb(input_ids, segment_ids), input_mask, masked_positions, emb.word_table(),
        deterministic=deterministic)

  def generator_logits(self, input_ids, segment_ids, input_mask, masked_positions, *,
                       deterministic: bool) -> jnp.ndarray:
    """MLM logits [B, N, V] float32 at `masked_positions` [B, N] only."""
    return self.generator_projection(input_ids, segment_ids, input_mask, masked_positions,
                                     deterministic=deterministic).logits()

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
