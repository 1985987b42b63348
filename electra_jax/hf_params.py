"""Flax params <-> Hugging Face ELECTRA tensors: the name table and flat-tree conversions.

The mapping is one table (`tower_entries`): HF tensor name, Flax path (with unrolled
layer_i), and whether the tensor is a transposed Linear weight.  Trees are handled as
flat {key path: array} dicts whose scanned encoder layers are split into layer_i.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from electra_jax.errors import UserInputError

# Truncated-normal(-2, 2) has std 0.8796; flax rescales by it, and so do we.
_TRUNC_STD = 0.87962566103423978

Path = tuple[str, ...]
Entry = tuple[str, Path, bool]  # (HF name, Flax path, transposed Linear)


# ----------------------------------------------------------------------------- names


def _dense(hf: str, path: Path) -> list[Entry]:
  return [(f'{hf}.weight', path + ('kernel',), True), (f'{hf}.bias', path + ('bias',), False)]


def _layer_norm(hf: str, path: Path) -> list[Entry]:
  return [(f'{hf}.weight', path + ('scale',), False), (f'{hf}.bias', path + ('bias',), False)]


def embedding_entries(emb_key: str) -> list[Entry]:
  """The embedding tensors (tables and LayerNorm) read from params[emb_key]."""
  out = [(f'electra.embeddings.{n}.weight', (emb_key, n, 'embedding'), False)
         for n in ('word_embeddings', 'position_embeddings', 'token_type_embeddings')]
  return out + _layer_norm('electra.embeddings.LayerNorm', (emb_key, 'LayerNorm'))


def _layer(i: int, tower: str) -> list[Entry]:
  hf, path = f'electra.encoder.layer.{i}', (tower, 'encoder', f'layer_{i}')
  out = []
  for n in ('query', 'key', 'value'):
    out += _dense(f'{hf}.attention.self.{n}', path + ('attention', 'self', n))
  out += _dense(f'{hf}.attention.output.dense', path + ('attention', 'output', 'dense'))
  out += _layer_norm(f'{hf}.attention.output.LayerNorm',
                     path + ('attention', 'output', 'LayerNorm'))
  out += _dense(f'{hf}.intermediate.dense', path + ('intermediate', 'dense'))
  out += _dense(f'{hf}.output.dense', path + ('output', 'dense'))
  out += _layer_norm(f'{hf}.output.LayerNorm', path + ('output', 'LayerNorm'))
  return out


def base_entries(cfg, emb_key: str, tower: str) -> list[Entry]:
  """ElectraModel's tensors ('electra.' prefix) for one tower."""
  out = embedding_entries(emb_key)
  if cfg.embedding_size != cfg.hidden_size:
    out += _dense('electra.embeddings_project', (tower, 'embeddings_project'))
  for i in range(cfg.num_layers):
    out += _layer(i, tower)
  return out


def _head_entries(head: str, emb_key: str, tower: str) -> list[Entry]:
  if head == 'discriminator':
    path = (tower, 'discriminator_predictions')
    return (_dense('discriminator_predictions.dense', path + ('dense',))
            + _dense('discriminator_predictions.dense_prediction', path + ('dense_prediction',)))
  path = (tower, 'generator_predictions')
  return (_dense('generator_predictions.dense', path + ('dense',))
          + _layer_norm('generator_predictions.LayerNorm', path + ('LayerNorm',))
          + [('generator_lm_head.weight', (emb_key, 'word_embeddings', 'embedding'), False),
             ('generator_lm_head.bias', (tower, 'output_bias'), False)])


def tower_entries(cfg, head: str, emb_key: str) -> list[Entry]:
  """Every HF tensor of ElectraForPreTraining ('discriminator') or ElectraForMaskedLM."""
  return base_entries(cfg, emb_key, head) + _head_entries(head, emb_key, head)


def gen_emb_key(embedding_sharing: str) -> str:
  """The params key of the generator's embeddings."""
  # 'tied' and 'gdes' generators read the shared block; only 'untied' has its own.
  return 'generator_embeddings' if embedding_sharing == 'untied' else 'embeddings'


# ----------------------------------------------------------------------------- trees


def _flatten(tree: Mapping[str, Any], path: Path = ()) -> dict[Path, Any]:
  """Nested dict -> {key path: leaf}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, path + (k,)))
    else:
      out[path + (k,)] = v
  return out


def _nest(flat: Mapping[Path, Any]) -> dict:
  """{key path: leaf} -> nested dict (inverse of `_flatten`)."""
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = value
  return tree


def _layer_index(path: Path) -> int | None:
  """Position of the key after 'encoder' ('layer' or 'layer_i'), or None."""
  for i in range(1, len(path)):
    if path[i - 1] == 'encoder' and path[i].startswith('layer'):
      return i
  return None


def _split_layers(flat: Mapping[Path, Any], take) -> dict[Path, Any]:
  """Scanned encoder leaves (.../encoder/layer/...) -> one leaf per .../layer_i/....

  `take(leaf, i)` gives layer i of a leaf; `leaf.shape[0]` is the layer count.
  """
  out = {}
  for path, value in flat.items():
    i = _layer_index(path)
    if i is None or path[i] != 'layer':
      out[path] = value
      continue
    for n in range(value.shape[0]):
      out[path[:i] + (f'layer_{n}',) + path[i + 1:]] = take(value, n)
  return out


def _join_layers(flat: Mapping[Path, np.ndarray]) -> dict[Path, np.ndarray]:
  """Inverse of `_split_layers` for arrays: stacks .../layer_i/... into .../layer/...."""
  out, groups = {}, {}
  for path, value in flat.items():
    i = _layer_index(path)
    if i is None or path[i] == 'layer':
      out[path] = value
      continue
    key = path[:i] + ('layer',) + path[i + 1:]
    groups.setdefault(key, {})[int(path[i][len('layer_'):])] = value
  for key, layers in groups.items():
    out[key] = np.stack([layers[n] for n in range(len(layers))])
  return out


def flat_params(params: Mapping[str, Any]) -> dict[Path, np.ndarray]:
  """A params tree (scanned or unrolled layers) -> {path with layer_i: numpy array}."""
  flat = {p: np.asarray(v) for p, v in _flatten(params).items()}
  return _split_layers(flat, lambda v, n: v[n])


def flat_shapes(abstract: Mapping[str, Any]) -> dict[Path, tuple[int, ...]]:
  """An abstract params tree (ShapeDtypeStructs) -> {path with layer_i: shape}."""
  import jax  # pylint: disable=g-import-not-at-top
  split = _split_layers(_flatten(abstract),
                        lambda a, n: jax.ShapeDtypeStruct(a.shape[1:], a.dtype))
  return {p: tuple(a.shape) for p, a in split.items()}


def nested_params(flat: Mapping[Path, np.ndarray], scan_layers: bool) -> dict:
  """{path with layer_i: array} -> the params tree, layers stacked when `scan_layers`."""
  return _nest(_join_layers(flat) if scan_layers else flat)


def to_hf(flat, entries: list[Entry]) -> dict[str, np.ndarray]:
  """{HF name: float32 array} for `entries` from {Flax path: array}."""
  return {hf: np.ascontiguousarray(flat[path].T if t else flat[path], dtype=np.float32)
          for hf, path, t in entries}


def from_hf(tensors: Mapping[str, np.ndarray], entries: list[Entry],
            shapes: Mapping[Path, tuple[int, ...]], where: str) -> dict[Path, np.ndarray]:
  """{Flax path: array} for `entries`; a one-line error on a missing or misshaped tensor.

  generator_lm_head.weight may be absent: save_pretrained drops it as it is tied.
  """
  out = {}
  for hf, path, transposed in entries:
    if hf not in tensors:
      if hf == 'generator_lm_head.weight':
        continue
      raise UserInputError(f'{where} lacks tensor {hf}; is it an ELECTRA checkpoint of the '
                           f'right kind (discriminator vs generator)?')
    value = np.asarray(tensors[hf])
    want = tuple(shapes[path])
    want_hf = want[::-1] if transposed else want
    if tuple(value.shape) != want_hf:
      raise UserInputError(f'{where} tensor {hf} has shape {tuple(value.shape)} but its '
                           f'config.json gives {want_hf}')
    value = value.astype(np.float32)
    out[path] = np.ascontiguousarray(value.T) if transposed else value
  return out


def check_unexpected(tensors: Mapping[str, np.ndarray], entries: list[Entry], role: str,
                     where: str):
  """Refuses tensors that `entries` does not name (a wrong role or model)."""
  extra = sorted(set(tensors) - {hf for hf, _, _ in entries})
  if extra:
    raise UserInputError(f'{where} holds tensor {extra[0]} (and {len(extra) - 1} more) that '
                         f'an ELECTRA {role} does not have; wrong directory?')


# ----------------------------------------------------------------------------- init


def fresh_params(shapes: Mapping[Path, tuple[int, ...]], std: float,
                 seed: int) -> dict[Path, np.ndarray]:
  """Initial weights as the model's initializers draw them (numpy, no XLA compile).

  Matrices and embeddings: truncated normal (+-2 std) with std `std`; LayerNorm
  scales 1; biases 0.
  """
  rng = np.random.default_rng(seed)
  out = {}
  for path, shape in shapes.items():
    if path[-1] == 'scale':
      out[path] = np.ones(shape, np.float32)
    elif path[-1] in ('bias', 'output_bias'):
      out[path] = np.zeros(shape, np.float32)
    else:
      out[path] = (_truncated_normal(rng, shape) * (std / _TRUNC_STD)).astype(np.float32)
  return out


def _truncated_normal(rng, shape) -> np.ndarray:
  x = rng.standard_normal(shape)
  bad = np.abs(x) > 2
  while bad.any():
    x[bad] = rng.standard_normal(int(bad.sum()))
    bad = np.abs(x) > 2
  return x

