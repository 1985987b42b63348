"""Hugging Face model directories on disk: config.json, weights, tokenizer files.

Reads and writes what `from_pretrained` / `save_pretrained` use (config.json <->
EncoderConfig, model.safetensors or sharded/pickled weights, vocab and tokenizer configs)
and creates local output directories atomically.  safetensors and torch are imported
inside functions only (the `hf` extra).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Mapping

import numpy as np
from etils import epath

from electra_jax import workdir as workdir_io
from electra_jax.errors import UserInputError

SAFETENSORS = 'model.safetensors'
_SAFETENSORS_INDEX = 'model.safetensors.index.json'
_PICKLE = 'pytorch_model.bin'
# Non-persistent buffers some older checkpoints still carry; never weights.
_IGNORED_SUFFIXES = ('embeddings.position_ids', 'embeddings.token_type_ids')
INSTALL_HINT = "install the hf extra: pip install 'electra_jax[hf]'"


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


def read_json(path: str) -> dict:
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
  single, index = os.path.join(path, SAFETENSORS), os.path.join(path, _SAFETENSORS_INDEX)
  pickle_path = os.path.join(path, _PICKLE)
  if os.path.isfile(single):
    return _load_safetensors([single])
  if os.path.isfile(index):
    shards = sorted(set(read_json(index).get('weight_map', {}).values()))
    return _load_safetensors([os.path.join(path, s) for s in shards])
  if os.path.isfile(pickle_path):
    if not allow_pickle:
      raise UserInputError(
          f'{pickle_path} is a pickle (unpickling can run code); pass --allow_pickle to '
          f'load it with torch.load(weights_only=True), or convert it to {SAFETENSORS}')
    return _load_pickle(pickle_path)
  raise UserInputError(f'Hugging Face directory {path} has no {SAFETENSORS} (or '
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
    raise UserInputError(f'reading Hugging Face weights needs safetensors; {INSTALL_HINT}') from e
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
    raise UserInputError(f'reading {path} needs torch; {INSTALL_HINT}') from e
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise UserInputError(f'cannot read {path} ({str(e).splitlines()[0][:200]})') from e
  return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}


# ----------------------------------------------------------------------------- tokenizer


def find_vocab(path: str) -> str | None:
  """The vocab file in an HF model dir: vocab.txt or a single *.model, else None."""
  names = sorted(os.listdir(path))
  if 'vocab.txt' in names:
    return os.path.join(path, 'vocab.txt')
  models = [n for n in names if n.endswith('.model')]
  return os.path.join(path, models[0]) if len(models) == 1 else None


def vocab_lower_case(path: str) -> bool:
  """do_lower_case of an HF model dir's tokenizer_config.json (True without one)."""
  cfg_path = os.path.join(path, 'tokenizer_config.json')
  if os.path.isfile(cfg_path):
    return bool(read_json(cfg_path).get('do_lower_case', True))
  return True


def write_tokenizer(tokenizer, dest: str, max_len: int):
  """Copies the vocab into `dest` with the config files transformers reads."""
  specials = {'pad_token': '[PAD]', 'unk_token': '[UNK]', 'cls_token': '[CLS]',
              'sep_token': '[SEP]', 'mask_token': '[MASK]'}
  ids = {k: tokenizer.token_to_id(v) for k, v in specials.items()}
  config = dict(specials, model_max_length=max_len)
  wordpiece = tokenizer.kind == 'wordpiece'
  name = 'vocab.txt' if wordpiece else os.path.basename(tokenizer.path)
  # The vocab may sit in a gs:// workdir; a plain file copy when it is local.
  epath.Path(tokenizer.path).copy(os.path.join(dest, name), overwrite=True)
  if wordpiece:
    config.update(tokenizer_class='ElectraTokenizer', do_lower_case=tokenizer.lower_case,
                  tokenize_chinese_chars=tokenizer.split_cjk, strip_accents=None)
  else:
    config.update(vocab_file=name)
  config['special_token_ids'] = {k.replace('_token', '_token_id'): v for k, v in ids.items()}
  write_json(os.path.join(dest, 'tokenizer_config.json'), config)
  write_json(os.path.join(dest, 'special_tokens_map.json'), specials)


def write_json(path: str, obj):
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write('\n')


# ----------------------------------------------------------------------------- output dirs


def new_dir(path: str, flag: str) -> str:
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
def atomic_dir(path: str):
  """Yields a temporary sibling of PATH, renamed to PATH on success, removed on failure."""
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(path)}.tmp-', dir=os.path.dirname(path))
  try:
    yield tmp
    os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise

