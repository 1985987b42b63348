"""The transformer layers of an ELECTRA tower in Flax linen (post-LN BERT, HF names).

Embeddings, self-attention (fused QKV matmul; `explicit_attention` when attention dropout
is on), the encoder layer and its scanned/unrolled, optionally remat'd stack, and the
prediction heads.  Parameter names are set by each submodule's `name=`, so they match
Hugging Face's ELECTRA (see `electra_jax.model` for the whole tree).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
import numpy as np

from electra_jax import counter_rng
from electra_jax.errors import UserInputError
from electra_jax.model_config import EncoderConfig

# Same "minus infinity" as jax.nn.dot_product_attention uses, so both paths agree.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def _kernel_init(cfg: EncoderConfig):
  return nn.initializers.truncated_normal(stddev=cfg.initializer_range)


class TokenDense(nn.Dense):
  """nn.Dense (same parameters) applied to the tokens as one [tokens, features] matrix.

  Flattening the leading dims first is free (a reshape), but it matters for the
  backward pass: the kernel gradient of a [B, L, H] input contracts two dims, which
  XLA:CPU lowers through layout copies at about half the speed of the 2-D matmul
  (benchmarks/train_step.md).  The matmul's own backward (`_token_matmul`) picks the
  faster orientation of the kernel gradient.  Its output is named 'dense_output', which
  the 'dots' remat policy keeps, as it keeps any plain matmul's output.
  """

  @nn.compact
  def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
    lead = inputs.shape[:-1]
    flat = inputs.reshape((-1, inputs.shape[-1])) if len(lead) != 1 else inputs
    kernel = self.param('kernel', self.kernel_init, (flat.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    dtype = self.dtype or flat.dtype
    y = _dense_matmul(flat.astype(dtype), kernel, bias, dtype)
    return y.reshape(lead + (self.features,))


def _dense_matmul(x, kernel, bias, out_dtype):
  """`_token_matmul(x, kernel)` plus `bias` (optional; a tuple is joined) in float32,
  rounded to `out_dtype` once and named 'dense_output', so the remat policy keeps the
  rounded output (bf16 residuals stay bf16)."""
  y = _token_matmul(x, kernel)
  if bias is not None:
    y = y + _joined(bias, 0)
  return checkpoint_name(y.astype(out_dtype), 'dense_output')


# Contract dim 0 of both operands: the tokens, for the kernel gradient.
_TOKENS = (((0,), (0,)), ((), ()))


@jax.custom_vjp
def _token_matmul(x, kernel):
  """x [T, in] @ kernel [in, out], accumulated in and returned as float32.

  `kernel` is the float32 parameter, or a tuple of them that it joins along the output
  features (the attention's query, key and value: one matmul; the pieces,
  not their joined copy, are what the backward pass keeps).  In bfloat16 the matmuls
  (forward and both gradients) take bfloat16 operands and accumulate into float32 (the
  caller adds the bias before rounding the output): XLA:CPU runs bf16 x bf16 -> f32
  matmuls with AVX512-BF16 at about twice its float32 rate (830-910 vs 410-460 GFLOP/s
  for ELECTRA-Small's shapes), but bf16 -> bf16 ones in float32 after converting both
  operands (benchmarks/train_step.md).  Accelerators accumulate in float32 anyway.  The
  kernel gradient is a float32 sum, not rounded to bfloat16; x's gradient is in x's
  dtype.

  The kernel gradient contracts the T tokens of x and of the output gradient g.  XLA:CPU
  runs that (Eigen) at ~350 GFLOP/s when the result has fewer rows than columns and at
  ~220 when it has more (x^T g for ELECTRA-Small's [1024, 256] output dense); so for a
  kernel with in > out it forms (g^T x) [out, in] and transposes that small result (the
  barrier keeps XLA from folding the transpose back in).  Same numbers, ~4% faster step
  (benchmarks/train_step.md).
  """
  return jax.lax.dot_general(x, _joined(kernel, 1).astype(x.dtype), (((1,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)


def _joined(parts, axis: int):
  return jnp.concatenate(parts, axis) if isinstance(parts, (tuple, list)) else parts


def _split_like(whole, parts, axis: int):
  """`whole` cut along `axis` into pieces shaped like `parts` (a tuple) or kept whole."""
  if not isinstance(parts, (tuple, list)):
    return whole.astype(parts.dtype)
  cuts = np.cumsum([p.shape[axis] for p in parts])[:-1]
  return type(parts)(w.astype(p.dtype) for w, p in zip(jnp.split(whole, cuts, axis), parts))


def _token_matmul_fwd(x, kernel):
  return _token_matmul(x, kernel), (x, kernel)


def _token_matmul_bwd(residuals, g):
  x, kernels = residuals
  kernel = _joined(kernels, 1)
  f32 = jnp.float32
  g = g.astype(x.dtype)
  dx = jax.lax.dot_general(g, kernel.astype(g.dtype), (((1,), (1,)), ((), ())),
                           preferred_element_type=f32)
  if kernel.shape[0] > kernel.shape[1]:
    dk = jax.lax.optimization_barrier(
        jax.lax.dot_general(g, x, _TOKENS, preferred_element_type=f32)).T
  else:
    dk = jax.lax.dot_general(x, g, _TOKENS, preferred_element_type=f32)
  return dx.astype(x.dtype), _split_like(dk, kernels, 1)


_token_matmul.defvjp(_token_matmul_fwd, _token_matmul_bwd)


def _dense(cfg: EncoderConfig, features: int, name: str) -> nn.Dense:
  return TokenDense(features, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                    kernel_init=_kernel_init(cfg), bias_init=nn.initializers.zeros,
                    name=name)


def _layer_norm(cfg: EncoderConfig, name: str) -> nn.LayerNorm:
  # float32 numerics regardless of the compute dtype.
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32,
                      param_dtype=jnp.float32, name=name)


_SQRT_HALF = 0.7071067811865476


def _gelu(x: jnp.ndarray) -> jnp.ndarray:
  """The exact (erf) GELU, x (1 + erf(x / sqrt 2)) / 2, in float32 (CPUs lack bf16 math).

  Written as BERT and Hugging Face write it.  jax.nn.gelu(approximate=False) goes
  through erfc instead, which XLA:CPU evaluates ~2.5x slower; the two differ by at most
  1e-6 (tests/test_model_numerics.py), and the step is ~3% faster this way
  (benchmarks/train_step.md).
  """
  x32 = x.astype(jnp.float32)
  return (x32 * 0.5 * (1.0 + jax.lax.erf(x32 * jnp.float32(_SQRT_HALF)))).astype(x.dtype)


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
    if cfg.platform == 'cpu':
      # Float32 accumulation and bias, its own VJP: bfloat16 steps ~25% faster on CPU.
      qkv = _dense_matmul(flat, kernels, biases, cfg.attention_compute_dtype)
    else:
      # A plain matmul: XLA:TPU fuses its backward with less memory (ELECTRA-Large,
      # bfloat16, v5e:2x4 batch 256: 15.1 GiB per chip; 15.4 through _token_matmul).
      # (Here the attention runs in the compute dtype.)
      qkv = (flat @ jnp.concatenate(kernels, axis=1).astype(dt)
             + jnp.concatenate(biases).astype(dt))
    qkv = qkv.reshape(x.shape[:-1] + (3, heads, head_dim))
    # jnp.split, not indexing: its gradient is one concatenate, where the three indexed
    # slices' gradients are three zero-padded arrays added up (XLA:CPU: attention fwd+bwd
    # 9.75 -> 8.62 ms per ELECTRA-Small layer on one core).
    q, k, v = (part[..., 0, :, :] for part in jnp.split(qkv, 3, axis=-3))
    use_dropout = cfg.attention_dropout_rate > 0.0 and not self.deterministic
    if use_dropout:
      out = explicit_attention(q, k, v, mask, dropout=lambda p: _dropout(
          self, p, cfg.attention_dropout_rate, deterministic=False))
    else:
      out = jax.nn.dot_product_attention(q, k, v, mask=mask)
    return out.reshape(out.shape[:-2] + (cfg.hidden_size,)).astype(dt)


def explicit_attention(q, k, v, mask, dropout=None):
  """softmax(q k^T / sqrt(d) masked) v with float32 logits and softmax.

  q, k, v: [B, L, heads, head_dim] in the compute dtype; mask broadcastable to
  [B, heads, L, L] (True = attend).  `dropout` (optional) is applied to the
  probabilities ([B, heads, L, L]; [B, L, L] with one head).  Same numerics as
  jax.nn.dot_product_attention's XLA path.

  The matmuls run heads-major ([B, heads, L, head_dim], batch dims leading): XLA:CPU
  otherwise copies operands into that order around each attention matmul: one layer's
  attention forward+backward at Small's 32 x 128 took 27 ms that way, 19 ms this way
  (the whole step ~3.5%, benchmarks/train_step.md).
  """
  if q.shape[2] == 1:
    # One head (ELECTRA-Small's generator): [B, L, head_dim] arrays without the head
    # dim.  XLA:CPU ran the size-1 dim's softmax-gradient reduction ~20x slower per
    # element; the generator's 12 layers: 47.8 -> 40.2 ms (fwd + bwd, one core).
    q, k, v = (a[:, :, 0] for a in (q, k, v))
    mask = jnp.reshape(mask, (1,) * (4 - jnp.ndim(mask)) + jnp.shape(mask))[:, 0]
    subscripts = ('bth,bsh->bts', 'bts,bsh->bth')
  else:
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
    subscripts = ('bnth,bnsh->bnts', 'bnts,bnsh->bnth')
  logits = jnp.einsum(subscripts[0], q, k, preferred_element_type=jnp.float32)
  logits = logits * jnp.float32(1.0 / np.sqrt(q.shape[-1]))
  logits = jnp.where(mask, logits, jnp.float32(_MASK_VALUE))
  probs = jax.nn.softmax(logits, axis=-1)
  if dropout is not None:
    probs = dropout(probs)
  context = jnp.einsum(subscripts[1], probs.astype(v.dtype), v)
  context = context[:, :, None] if context.ndim == 3 else context.transpose(0, 2, 1, 3)
  # Named so the 'dots' remat policy keeps it (4 MiB per layer for Small at 32 x 128):
  # the output projection's kernel gradient needs it, and recomputing it costs the
  # whole attention forward again.
  return checkpoint_name(context, 'attention_context')


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
  # Save the outputs of matmuls without batch dims and of the dense projections (named:
  # their custom backward hides the matmul from the policy) and the attention context;
  # recompute the attention scores and softmax, GELU, LayerNorms and
  # dropout masks.  (Saving the probabilities or the GELU output too measured slower.)
  return jax.checkpoint_policies.save_from_both_policies(
      jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
      jax.checkpoint_policies.save_only_these_names('attention_context', 'dense_output'))


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
