"""Hugging Face interop: export a pretraining workdir, import an HF ELECTRA checkpoint.

    python -m electra_jax.hf export --workdir=PRETRAIN_WORKDIR --output_dir=DIR
    python -m electra_jax.hf import --hf_dir=DIR [--generator_dir=DIR] --workdir=NEW \
        [--vocab=FILE] [--allow_pickle]

`export` writes DIR/discriminator (ElectraForPreTraining) and DIR/generator
(ElectraForMaskedLM), each with config.json, model.safetensors and the tokenizer
files, so `transformers` loads them offline with `from_pretrained`.  Shared ('tied')
embeddings are written into both; with 'gdes' the discriminator gets shared + delta and
the generator the shared block.  Only objectives with a replaced-token head (electra,
electra_15) export; fine-tune other objectives' workdirs directly.  PRETRAIN_WORKDIR may
be local or gs://BUCKET/PATH; DIR is local, written to a temporary directory and renamed
at the end, so a failure never leaves a complete-looking export.

`import` turns an HF ELECTRA discriminator checkpoint (and optionally a generator)
into a pretraining workdir: config.json, vocab/ and checkpoints/0/ holding
TrainState(step 0, params, a fresh optimizer state).  Without --generator_dir the
generator is freshly initialised; an ElectraModel checkpoint (no 'electra.' prefix,
no head) gets a fresh discriminator head.  Fine-tuning reads an HF directory
directly through `load_encoder` (used by `finetune.load_init`).

The name mapping is one table (`_tower_entries`): HF tensor name, Flax path (with
unrolled layer_i), and whether the tensor is a transposed Linear weight.  torch,
transformers and safetensors are imported inside functions only (the `hf` extra).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Mapping

import numpy as np
from etils import epath

from electra_jax import workdir as workdir_io
from electra_jax.errors import UserInputError

SUBDIRS = ('discriminator', 'generator')
_SAFETENSORS = 'model.safetensors'
_SAFETENSORS_INDEX = 'model.safetensors.index.json'
_PICKLE = 'pytorch_model.bin'
# Non-persistent buffers some older checkpoints still carry; never weights.
_IGNORED_SUFFIXES = ('embeddings.position_ids', 'embeddings.token_type_ids')
_INSTALL_HINT = "install the hf extra: pip install 'electra_jax[hf]'"
# Truncated-normal(-2, 2) has std 0.8796; flax rescales by it, and so do we.
_TRUNC_STD = 0.87962566103423978

Path = tuple[str, ...]
Entry = tuple[str, Path, bool]  # (HF name, Flax path, transposed Linear)


# ----------------------------------------------------------------------------- names


def _dense(hf: str, path: Path) -> list[Entry]:
  return [(f'{hf}.weight', path + ('kernel',), True), (f'{hf}.bias', path + ('bias',), False)]


def _layer_norm(hf: str, path: Path) -> list[Entry]:
  return [(f'{hf}.weight', path + ('scale',), False), (f'{hf}.bias', path + ('bias',), False)]


def _embeddings(emb_key: str) -> list[Entry]:
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


def _base_entries(cfg, emb_key: str, tower: str) -> list[Entry]:
  """ElectraModel's tensors ('electra.' prefix) for one tower."""
  out = _embeddings(emb_key)
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


def _tower_entries(cfg, head: str, emb_key: str) -> list[Entry]:
  """Every HF tensor of ElectraForPreTraining ('discriminator') or ElectraForMaskedLM."""
  return _base_entries(cfg, emb_key, head) + _head_entries(head, emb_key, head)


def _gen_emb_key(embedding_sharing: str) -> str:
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


def _to_hf(flat, entries: list[Entry]) -> dict[str, np.ndarray]:
  return {hf: np.ascontiguousarray(flat[path].T if t else flat[path], dtype=np.float32)
          for hf, path, t in entries}


# ----------------------------------------------------------------------------- configs


def hf_config(cfg, architecture: str, pad_token_id: int = 0) -> dict[str, Any]:
  """An ElectraConfig dict (config.json) for an EncoderConfig."""
  return {
      'architectures': [architecture],
      'model_type': 'electra',
      'vocab_size': cfg.vocab_size,
      'embedding_size': cfg.embedding_size,
      'hidden_size': cfg.hidden_size,
      'num_hidden_layers': cfg.num_layers,
      'num_attention_heads': cfg.num_heads,
      'intermediate_size': cfg.intermediate_size,
      'hidden_act': 'gelu',
      'hidden_dropout_prob': cfg.dropout_rate,
      'attention_probs_dropout_prob': cfg.attention_dropout_rate,
      'max_position_embeddings': cfg.max_position_embeddings,
      'type_vocab_size': cfg.type_vocab_size,
      'initializer_range': cfg.initializer_range,
      'layer_norm_eps': cfg.layer_norm_eps,
      'position_embedding_type': 'absolute',
      'pad_token_id': int(pad_token_id),
      'tie_word_embeddings': True,
      'dtype': 'float32',
  }


def encoder_config_from_hf(hf: Mapping[str, Any], where: str):
  """EncoderConfig from an ElectraConfig dict; refuses settings our model lacks."""
  from electra_jax.model import EncoderConfig  # pylint: disable=g-import-not-at-top
  if hf.get('model_type', 'electra') != 'electra':
    raise UserInputError(f"{where} has model_type={hf.get('model_type')!r}; only 'electra' "
                         f"checkpoints can be imported")
  if hf.get('hidden_act', 'gelu') != 'gelu':
    raise UserInputError(f"{where} has hidden_act={hf['hidden_act']!r}; only 'gelu' (erf) "
                         f"matches this model")
  if hf.get('position_embedding_type', 'absolute') != 'absolute':
    raise UserInputError(f"{where} has position_embedding_type="
                         f"{hf['position_embedding_type']!r}; only 'absolute' is supported")
  keys = dict(vocab_size='vocab_size', hidden_size='hidden_size', num_layers='num_hidden_layers',
              num_heads='num_attention_heads', intermediate_size='intermediate_size')
  missing = [v for v in keys.values() if v not in hf]
  if missing:
    raise UserInputError(f"{where} lacks {', '.join(missing)}; is it an ELECTRA config.json?")
  kwargs = {k: int(hf[v]) for k, v in keys.items()}
  kwargs['embedding_size'] = int(hf.get('embedding_size') or hf['hidden_size'])
  for ours, theirs in (('max_position_embeddings', 'max_position_embeddings'),
                       ('type_vocab_size', 'type_vocab_size')):
    if theirs in hf:
      kwargs[ours] = int(hf[theirs])
  for ours, theirs in (('dropout_rate', 'hidden_dropout_prob'),
                       ('attention_dropout_rate', 'attention_probs_dropout_prob'),
                       ('initializer_range', 'initializer_range'),
                       ('layer_norm_eps', 'layer_norm_eps')):
    if theirs in hf:
      kwargs[ours] = float(hf[theirs])
  return EncoderConfig(**kwargs)


def _read_json(path: str) -> dict:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserInputError(f'cannot read {path} ({e})') from e


# ----------------------------------------------------------------------------- HF files


def model_dir(path: str, role: str = 'discriminator') -> str:
  """The model directory inside an HF path: PATH itself, or PATH/<role> of an export."""
  if workdir_io.is_remote(path):
    raise UserInputError(f'Hugging Face directory {path} must be local; copy it first '
                         f'(e.g. gsutil -m cp -r {path} .)')
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise UserInputError(f'Hugging Face directory {path} does not exist')
  if not os.path.isfile(os.path.join(path, 'config.json')) and os.path.isdir(
      os.path.join(path, role)):
    path = os.path.join(path, role)
  if not os.path.isfile(os.path.join(path, 'config.json')):
    raise UserInputError(f'Hugging Face directory {path} has no config.json; pass the '
                         f'directory written by save_pretrained (or an export root)')
  return path


def read_hf_tensors(path: str, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """All tensors of an HF model dir as numpy, base names 'electra.'-prefixed."""
  tensors = _read_raw_tensors(path, allow_pickle)
  out = {}
  for name, value in tensors.items():
    if name.endswith(_IGNORED_SUFFIXES):
      continue
    if name.startswith(('embeddings.', 'embeddings_project.', 'encoder.')):
      name = 'electra.' + name  # an ElectraModel checkpoint
    out[name] = value
  return out


def _read_raw_tensors(path: str, allow_pickle: bool) -> dict[str, np.ndarray]:
  single, index = os.path.join(path, _SAFETENSORS), os.path.join(path, _SAFETENSORS_INDEX)
  pickle_path = os.path.join(path, _PICKLE)
  if os.path.isfile(single):
    return _load_safetensors([single])
  if os.path.isfile(index):
    shards = sorted(set(_read_json(index).get('weight_map', {}).values()))
    return _load_safetensors([os.path.join(path, s) for s in shards])
  if os.path.isfile(pickle_path):
    if not allow_pickle:
      raise UserInputError(
          f'{pickle_path} is a pickle (unpickling can run code); pass --allow_pickle to '
          f'load it with torch.load(weights_only=True), or convert it to {_SAFETENSORS}')
    return _load_pickle(pickle_path)
  raise UserInputError(f'Hugging Face directory {path} has no {_SAFETENSORS} (or '
                       f'{_PICKLE}); pass the directory written by save_pretrained')


def _load_safetensors(paths: list[str]) -> dict[str, np.ndarray]:
  """Every tensor of the files as numpy; bfloat16/float16 ones are widened to float32.

  Read through safetensors' jax reader: numpy has no bfloat16, and checkpoints saved
  with torch_dtype=bfloat16 are common.
  """
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  try:
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserInputError(f'reading Hugging Face weights needs safetensors; {_INSTALL_HINT}') from e
  out = {}
  for p in paths:
    try:
      with safe_open(p, framework='flax') as f:
        for name in f.keys():
          value = np.asarray(f.get_tensor(name))
          if value.dtype in (np.float16, ml_dtypes.bfloat16):
            value = value.astype(np.float32)
          out[name] = value
    except Exception as e:  # pylint: disable=broad-except
      raise UserInputError(f'cannot read {p} ({str(e).splitlines()[0][:200]})') from e
  return out


def _load_pickle(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserInputError(f'reading {path} needs torch; {_INSTALL_HINT}') from e
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise UserInputError(f'cannot read {path} ({str(e).splitlines()[0][:200]})') from e
  return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}


def _take(tensors: Mapping[str, np.ndarray], entries: list[Entry],
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


def _check_unexpected(tensors: Mapping[str, np.ndarray], entries: list[Entry], role: str,
                      where: str):
  extra = sorted(set(tensors) - {hf for hf, _, _ in entries})
  if extra:
    raise UserInputError(f'{where} holds tensor {extra[0]} (and {len(extra) - 1} more) that '
                         f'an ELECTRA {role} does not have; wrong directory?')


# ----------------------------------------------------------------------------- tokenizer


def find_vocab(path: str) -> str | None:
  """The vocab file in an HF model dir: vocab.txt or a single *.model, else None."""
  names = sorted(os.listdir(path))
  if 'vocab.txt' in names:
    return os.path.join(path, 'vocab.txt')
  models = [n for n in names if n.endswith('.model')]
  return os.path.join(path, models[0]) if len(models) == 1 else None


def _lower_case(path: str) -> bool:
  cfg_path = os.path.join(path, 'tokenizer_config.json')
  if os.path.isfile(cfg_path):
    return bool(_read_json(cfg_path).get('do_lower_case', True))
  return True


def write_tokenizer(tokenizer, dest: str, max_len: int):
  """Copies the vocab into `dest` with the config files transformers reads."""
  specials = {'pad_token': '[PAD]', 'unk_token': '[UNK]', 'cls_token': '[CLS]',
              'sep_token': '[SEP]', 'mask_token': '[MASK]'}
  ids = {k: tokenizer.token_to_id(v) for k, v in specials.items()}
  config = dict(specials, model_max_length=max_len)
  if tokenizer.kind == 'wordpiece':
    _copy_vocab(tokenizer.path, os.path.join(dest, 'vocab.txt'))
    config.update(tokenizer_class='ElectraTokenizer', do_lower_case=tokenizer.lower_case,
                  tokenize_chinese_chars=tokenizer.split_cjk, strip_accents=None)
  else:
    name = os.path.basename(tokenizer.path)
    _copy_vocab(tokenizer.path, os.path.join(dest, name))
    config.update(vocab_file=name)
  config['special_token_ids'] = {k.replace('_token', '_token_id'): v for k, v in ids.items()}
  _write_json(os.path.join(dest, 'tokenizer_config.json'), config)
  _write_json(os.path.join(dest, 'special_tokens_map.json'), specials)


def _copy_vocab(src: str, dest: str):
  """Copies a vocab file, which may sit in a gs:// workdir, to the local file `dest`."""
  epath.Path(src).copy(dest, overwrite=True)  # shutil.copyfile when `src` is local


def _write_json(path: str, obj):
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write('\n')


# ----------------------------------------------------------------------------- export


@dataclasses.dataclass(frozen=True)
class Workdir:
  """What export needs from a pretraining workdir."""
  disc: Any
  gen: Any
  embedding_sharing: str
  params: dict
  tokenizer: Any
  step: int
  objective: str = 'electra'


_EXPORTABLE_OBJECTIVES = ('electra', 'electra_15')


def read_workdir(path: str) -> Workdir:
  """The latest checkpoint's params (numpy) and the model shape of a pretraining workdir.

  PATH may be local or a URL (gs://bucket/run).  Only workdirs of an objective with a
  replaced-token head (electra, electra_15) can be exported; any other is a
  UserInputError before the checkpoint is read.
  """
  from electra_jax import train  # pylint: disable=g-import-not-at-top
  from electra_jax.model import (ElectraPretrainingModel, abstract_params,  # pylint: disable=g-import-not-at-top
                                 encoder_config_from, generator_config)
  path = workdir_io.resolve(path)  # gs://... stays as it is
  saved, tokenizer = train.read_workdir_config(path)
  objective = saved.get('objective', 'electra')
  if objective not in _EXPORTABLE_OBJECTIVES:
    raise UserInputError(
        f'hf export supports objectives {" and ".join(_EXPORTABLE_OBJECTIVES)}; {path} was '
        f'pretrained with objective={objective} (fine-tune from the workdir directly)')
  model_cfg = saved['model']
  disc = encoder_config_from(model_cfg, tokenizer.vocab_size)
  gen = generator_config(disc, model_cfg.get('generator_size', 0.25))
  sharing = model_cfg.get('embedding_sharing', 'tied')
  step, params = train.restore_params(
      path, abstract_params(ElectraPretrainingModel(disc, gen, sharing, objective)))
  return Workdir(disc, gen, sharing, params, tokenizer, step, objective)


def hf_tensors(params, disc, gen, embedding_sharing: str) -> dict[str, dict[str, np.ndarray]]:
  """{'discriminator': HF tensors, 'generator': HF tensors} of a pretraining params tree.

  With embedding_sharing='gdes' the discriminator's embedding tensors are the folded
  block embeddings + embeddings_delta; the generator's are the shared block.
  """
  from electra_jax.model import fold_embeddings_delta  # pylint: disable=g-import-not-at-top
  disc_emb_key = 'embeddings'
  if embedding_sharing == 'gdes':
    disc_emb_key = 'gdes_folded_embeddings'  # a key no model tree uses
    params = dict(params)
    params[disc_emb_key] = fold_embeddings_delta(params['embeddings'],
                                                 params['embeddings_delta'])
  flat = flat_params(params)
  return {'discriminator': _to_hf(flat, _tower_entries(disc, 'discriminator', disc_emb_key)),
          'generator': _to_hf(flat, _tower_entries(gen, 'generator',
                                                   _gen_emb_key(embedding_sharing)))}


def _new_dir(path: str, flag: str) -> str:
  """The absolute PATH of a local directory to create; refuses an existing one."""
  if workdir_io.is_remote(path):
    raise UserInputError(f'--{flag}={path} must be a local directory; copy it to its '
                         f'bucket afterwards (e.g. gsutil -m cp -r)')
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(path):
    raise UserInputError(f'--{flag}={path} already exists; pass a new directory')
  if not os.path.isdir(os.path.dirname(path)):
    raise UserInputError(f'the parent of --{flag}={path} does not exist')
  return path


@contextlib.contextmanager
def _atomic_dir(path: str):
  """Yields a temporary sibling of PATH, renamed to PATH on success, removed on failure."""
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(path)}.tmp-', dir=os.path.dirname(path))
  try:
    yield tmp
    os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def export(workdir: str, output_dir: str) -> str:
  """Writes OUTPUT_DIR/{discriminator,generator} from WORKDIR's latest checkpoint."""
  output_dir = _new_dir(output_dir, 'output_dir')
  w = read_workdir(workdir)
  try:
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserInputError(f'export needs safetensors; {_INSTALL_HINT}') from e
  tensors = hf_tensors(w.params, w.disc, w.gen, w.embedding_sharing)
  with _atomic_dir(output_dir) as tmp:
    for role, cfg, arch in (('discriminator', w.disc, 'ElectraForPreTraining'),
                            ('generator', w.gen, 'ElectraForMaskedLM')):
      dest = os.path.join(tmp, role)
      os.makedirs(dest)
      _write_json(os.path.join(dest, 'config.json'), hf_config(cfg, arch, w.tokenizer.pad_id))
      save_file(tensors[role], os.path.join(dest, _SAFETENSORS), metadata={'format': 'pt'})
      write_tokenizer(w.tokenizer, dest, cfg.max_position_embeddings)
  print(f'exported checkpoint {w.step} of {workdir_io.resolve(workdir)} to {output_dir}/'
        f'{{discriminator,generator}}', flush=True)
  return output_dir


# ----------------------------------------------------------------------------- import


def _tokenizer_for(path: str, vocab: str | None):
  from electra_jax.tokenization import load_tokenizer  # pylint: disable=g-import-not-at-top
  if vocab:
    return load_tokenizer(vocab)
  found = find_vocab(path)
  return load_tokenizer(found, lower_case=_lower_case(path)) if found else None


def _check_vocab(tokenizer, cfg, where: str):
  if tokenizer is not None and tokenizer.vocab_size != cfg.vocab_size:
    raise UserInputError(f'{where} has vocab_size {cfg.vocab_size} but its vocab '
                         f'{tokenizer.path} holds {tokenizer.vocab_size} tokens')


def load_encoder(path: str, allow_pickle: bool = False):
  """(EncoderConfig, ElectraEncoder params as numpy, Tokenizer) from an HF directory.

  PATH is an HF model dir or an export root (PATH/discriminator is used).
  """
  from electra_jax.model import ElectraEncoder, abstract_params  # pylint: disable=g-import-not-at-top
  path = model_dir(path)
  cfg = encoder_config_from_hf(_read_json(os.path.join(path, 'config.json')),
                               f'{path}/config.json')
  tokenizer = _tokenizer_for(path, None)
  if tokenizer is None:
    raise UserInputError(f'Hugging Face directory {path} has no vocab.txt or *.model; '
                         f'import it with `python -m electra_jax.hf import --vocab=FILE`')
  _check_vocab(tokenizer, cfg, f'{path}/config.json')
  shapes = flat_shapes(abstract_params(ElectraEncoder(cfg)))
  flat = _take(read_hf_tensors(path, allow_pickle), _base_entries(cfg, 'embeddings',
                                                                  'discriminator'),
               shapes, f'discriminator {path}')
  print(f'init: Hugging Face {path} (discriminator {cfg.num_layers} layers, hidden '
        f'{cfg.hidden_size}, vocab {tokenizer.vocab_size})', flush=True)
  return cfg, nested_params(flat, cfg.scan_layers), tokenizer


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


def _same(a: Mapping, b: Mapping, keys) -> bool:
  return all(k in a and k in b and np.array_equal(a[k], b[k]) for k in keys)


def _generator_size(disc, gen_hf: Mapping[str, Any], where: str) -> float:
  """The generator_size that makes generator_config(disc) give the HF generator's shape."""
  from electra_jax.model import generator_config  # pylint: disable=g-import-not-at-top
  got = encoder_config_from_hf(gen_hf, where)
  hidden = got.hidden_size
  size = hidden / disc.hidden_size
  want = generator_config(disc, size)
  for name in ('hidden_size', 'num_layers', 'num_heads', 'intermediate_size',
               'embedding_size', 'vocab_size'):
    if getattr(want, name) != getattr(got, name):
      raise UserInputError(
          f'{where} has {name}={getattr(got, name)} but a generator of hidden size {hidden} '
          f'here needs {getattr(want, name)} (hidden/64 heads, 4x hidden FFN, the '
          f"discriminator's depth and embeddings)")
  return size


def _size_name(disc) -> str:
  """The preset whose shape `disc` has ('small' when none matches)."""
  from electra_jax.model import SIZES  # pylint: disable=g-import-not-at-top
  return next((n for n, s in SIZES.items()
               if all(getattr(disc, k) == v for k, v in s.items())), 'small')


def _pretrain_config(disc, generator_size: float, sharing: str, vocab_path: str):
  """A pretrain_config whose model section reproduces `disc` (preset when one matches)."""
  from electra_jax.config import pretrain_config  # pylint: disable=g-import-not-at-top
  config = pretrain_config(_size_name(disc))
  m = config.model
  for field in ('hidden_size', 'embedding_size', 'num_layers', 'num_heads',
                'intermediate_size', 'max_position_embeddings', 'type_vocab_size',
                'dropout_rate', 'attention_dropout_rate', 'initializer_range',
                'layer_norm_eps'):
    m[field] = getattr(disc, field)
  m.generator_size = generator_size
  m.embedding_sharing = sharing
  config.data.vocab = vocab_path
  return config


def import_checkpoint(hf_dir: str, workdir: str, generator_dir: str | None = None,
                      vocab: str | None = None, allow_pickle: bool = False, seed: int = 0):
  """Writes a pretraining workdir (checkpoint at step 0) from an HF ELECTRA checkpoint."""
  from electra_jax.model import GENERATOR_SIZE, generator_config  # pylint: disable=g-import-not-at-top
  workdir = _new_dir(workdir, 'workdir')
  disc_dir = model_dir(hf_dir, 'discriminator')
  disc = encoder_config_from_hf(_read_json(os.path.join(disc_dir, 'config.json')),
                                f'{disc_dir}/config.json')
  tokenizer = _tokenizer_for(disc_dir, vocab)
  _check_vocab(tokenizer, disc, f'{disc_dir}/config.json')
  disc_t = read_hf_tensors(disc_dir, allow_pickle)
  gen_dir = gen_t = None
  gen_size = GENERATOR_SIZE[_size_name(disc)]
  if generator_dir:
    gen_dir = model_dir(generator_dir, 'generator')
    gen_size = _generator_size(disc, _read_json(os.path.join(gen_dir, 'config.json')),
                               f'generator {gen_dir}/config.json')
    gen_t = read_hf_tensors(gen_dir, allow_pickle)
  base_names = [hf for hf, _, _ in _embeddings('embeddings')]
  sharing = 'tied' if gen_t is None or _same(disc_t, gen_t, base_names) else 'untied'
  params = _import_params(disc, generator_config(disc, gen_size), sharing,
                          (disc_t, disc_dir), (gen_t, gen_dir), seed)
  vocab_copy = (os.path.join(workdir, 'vocab', os.path.basename(tokenizer.path))
                if tokenizer else '')
  config = _pretrain_config(disc, gen_size, sharing, vocab_copy)
  with _atomic_dir(workdir) as tmp:
    _write_workdir(tmp, config, tokenizer, params)
  _report_import(disc_dir, gen_dir, _has_head(disc_t), tokenizer, sharing, workdir)
  print(_resume_hint(config, workdir), flush=True)
  return workdir


def _has_head(tensors: Mapping[str, np.ndarray]) -> bool:
  return any(n.startswith('discriminator_predictions.') for n in tensors)


def _import_params(disc, gen, sharing: str, disc_src, gen_src, seed: int) -> dict:
  """The pretraining params tree from HF tensors; absent parts freshly initialised.

  disc_src / gen_src: (tensors, directory); gen_src's tensors may be None (no
  generator), and a discriminator without discriminator_predictions gets a fresh head.
  """
  from electra_jax.model import ElectraPretrainingModel, abstract_params  # pylint: disable=g-import-not-at-top
  shapes = flat_shapes(abstract_params(ElectraPretrainingModel(disc, gen, sharing)))
  (disc_t, disc_dir), (gen_t, gen_dir) = disc_src, gen_src
  entries = _tower_entries(disc, 'discriminator', 'embeddings')
  _check_unexpected(disc_t, entries, 'discriminator', disc_dir)
  if not _has_head(disc_t):
    entries = _base_entries(disc, 'embeddings', 'discriminator')
  flat = _take(disc_t, entries, shapes, f'discriminator {disc_dir}')
  if gen_t is not None:
    entries = _tower_entries(gen, 'generator', _gen_emb_key(sharing))
    _check_unexpected(gen_t, entries, 'generator', gen_dir)
    _check_tied_head(gen_t, gen_dir)
    gen_flat = _take(gen_t, entries, shapes, f'generator {gen_dir}')
    flat.update({p: v for p, v in gen_flat.items() if p not in flat})
  missing = {p: s for p, s in shapes.items() if p not in flat}
  flat.update(fresh_params(missing, disc.initializer_range, seed))
  return nested_params(flat, disc.scan_layers)


def _write_workdir(path: str, config, tokenizer, params):
  """config.json, vocab/ and checkpoints/0 (fresh optimizer state), as train.py has them."""
  import jax  # pylint: disable=g-import-not-at-top
  from electra_jax import optim, train  # pylint: disable=g-import-not-at-top
  train.check_workdir_config(path, config, tokenizer.fingerprint if tokenizer else '')
  if tokenizer is not None:
    train.save_vocab(path, tokenizer.path)
  tx, _ = optim.make_optimizer(config.optim, config.train.steps)
  state = train.TrainState(step=np.asarray(0, np.int32), params=params,
                           opt_state=jax.tree.map(np.asarray, tx.init(params)))
  train.save_state(path, state)


def _check_tied_head(gen_t: Mapping[str, np.ndarray], gen_dir: str):
  head = gen_t.get('generator_lm_head.weight')
  table = gen_t['electra.embeddings.word_embeddings.weight']
  if head is not None and not np.array_equal(head, table):
    raise UserInputError(f'generator {gen_dir} tensor generator_lm_head.weight differs from '
                         f'its word embeddings; only tied output embeddings are supported')


def _report_import(disc_dir, gen_dir, has_head, tokenizer, sharing, workdir):
  print(f'discriminator: {disc_dir}' + ('' if has_head else
                                        ' (no discriminator_predictions: head freshly '
                                        'initialised)'), flush=True)
  print(f'generator: {gen_dir} ({sharing} embeddings)' if gen_dir else
        'generator: freshly initialised (pass --generator_dir to import one)', flush=True)
  if tokenizer is None:
    print('vocab: none found (no vocab.txt or *.model); pass --vocab=FILE to import one, '
          'or fine-tuning and pretraining cannot use this workdir', flush=True)
  print(f'wrote pretraining workdir {workdir} (checkpoint at step 0)', flush=True)


def _resume_hint(config, workdir: str) -> str:
  """The train command whose config matches the imported model section."""
  from electra_jax.config import pretrain_config  # pylint: disable=g-import-not-at-top
  preset = pretrain_config(config.model.size).model
  flags = [f'--config.model.{k}={v}' for k, v in config.model.items() if preset[k] != v]
  if config.data.vocab:
    flags.append(f'--config.data.vocab={config.data.vocab}')
  return ' '.join([f'continue pretraining: python -m electra_jax.train '
                   f'--config=configs/{config.model.size}.py --workdir={workdir}'] + flags)


# ----------------------------------------------------------------------------- CLI

_COMMANDS = ('export', 'import')


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  args = argv[1:]
  if len(args) != 1 or args[0] not in _COMMANDS:
    raise UserInputError(f'usage: python -m electra_jax.hf {{{"|".join(_COMMANDS)}}} '
                         f'--flags (got {" ".join(args) or "no command"})')
  if args[0] == 'export':
    _require(f, 'workdir', 'output_dir')
    export(f.workdir, f.output_dir)
  else:
    _require(f, 'hf_dir', 'workdir')
    import_checkpoint(f.hf_dir, f.workdir, generator_dir=f.generator_dir, vocab=f.vocab,
                      allow_pickle=f.allow_pickle)


def _require(f, *names):
  missing = [n for n in names if not getattr(f, n)]
  if missing:
    raise UserInputError(f'set --{" and --".join(missing)}')


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('workdir', None, 'export: pretraining workdir; import: new workdir.')
  flags.DEFINE_string('output_dir', None, 'export: new directory for the HF models.')
  flags.DEFINE_string('hf_dir', None, 'import: HF discriminator dir (or an export root).')
  flags.DEFINE_string('generator_dir', None, 'import: HF generator dir (else fresh init).')
  flags.DEFINE_string('vocab', None, 'import: vocab file when hf_dir holds none.')
  flags.DEFINE_bool('allow_pickle', False, 'import: allow reading pytorch_model.bin.')


if __name__ == '__main__':
  from electra_jax import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(main)
