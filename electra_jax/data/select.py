"""Picks the pretraining data from the config and builds it once, cached.

`prepare_dataset(config.data)` returns the directory of a built dataset (open
it with `electra_jax.data.dataset.open_dataset`).  Exactly one source may be
set in the config:

  data.text        comma-separated globs of raw text (one paragraph per line,
                   a blank line between documents)
  data.dataset_dir a dataset already built by `python -m electra_jax.data.build`
  data.tfds        a tensorflow-datasets text dataset (field data.tfds_text_key)

With none set, training uses the built-in demo corpus (`data/demo.py`: text
shipped with Python, ~2 MB) and a vocab of `min(data.vocab_size, 8000)` pieces
trained on it.

Raw text and tfds data are built into a cache (`data.cache_dir`, else
$ELECTRA_JAX_CACHE, else ~/.cache/electra_jax) on first use.  The cache key
hashes everything the built examples depend on: the input files' resolved paths,
sizes and modification times (or the tfds name and text field), the vocab's
fingerprint (or, for a vocab trained here, its settings), max_seq_length,
validation_fraction and seed.  A second call with the same inputs reuses the
built dataset; touching an input file builds a new one.  When data.vocab is
empty a SentencePiece unigram vocab (lower-cased) of data.vocab_size pieces is
trained on the same inputs and cached beside it.

Layout of the cache directory::

  dataset-<key>/           the built dataset (what prepare_dataset returns)
  dataset-<key>.done.json  written last: the key's inputs; without it the
                           directory is an interrupted build and is rebuilt
  vocab-<key>/spm.model    a vocab trained here
  demo/corpus-<tag>.txt    the demo corpus

A build killed outright (SIGKILL, power loss) can leave a hidden
`.dataset-<key>.incomplete-*` directory behind; it is never read and may be
deleted.  The cache is never pruned: delete old `dataset-*` entries by hand.

Multi-host: call with `is_builder=(jax.process_index() == 0)`.  Process 0
builds; the others compute the same key and poll until `dataset-<key>.done.json`
appears (every 10 s, up to `wait_timeout_s`), so the cache directory and text
inputs must be on storage every host sees with identical metadata.  Without
shared storage, either let every host build its own copy (`is_builder=True`
everywhere: the build is deterministic) or build once with
`python -m electra_jax.data.build` and pass data.dataset_dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable
import uuid

from etils import epath
import numpy as np

from electra_jax.errors import UserInputError

# Bump when the builder's output for the same inputs changes.
CACHE_FORMAT_VERSION = 1
# Vocab size used for the demo corpus when data.vocab_size is larger.
DEMO_VOCAB_SIZE = 8000
# Settings of vocabs trained here (electra_jax.data.vocab.train_vocab).
TRAINED_VOCAB_MODEL_TYPE = 'unigram'
TRAINED_VOCAB_LOWER_CASE = True

_SOURCES = ('text', 'dataset_dir', 'tfds')
_DEFAULTS = {
    'text': '',
    'dataset_dir': '',
    'tfds': '',
    'tfds_text_key': 'text',
    'vocab': '',
    'vocab_size': 30522,
    'max_seq_length': 128,
    'validation_fraction': 0.01,
    'seed': 0,
    'num_workers': 0,
    'cache_dir': '',
}
_POLL_SECONDS = 10.0
# Text sampled from a tfds dataset to train its vocab.
TFDS_VOCAB_MAX_LINES = 2_000_000
TFDS_VOCAB_MAX_BYTES = 1 << 30
_HOW_TO_POINT = ("point at real data with --config.data.text='path/*.txt' or "
                 '--config.data.dataset_dir=DIR')


def _field(data_cfg, name: str):
  """data_cfg.name, or its default when the config lacks the field."""
  if data_cfg is None:
    return _DEFAULTS[name]
  if hasattr(data_cfg, 'get'):
    value = data_cfg.get(name, _DEFAULTS[name])
  else:
    value = getattr(data_cfg, name, _DEFAULTS[name])
  return _DEFAULTS[name] if value is None else value


def default_cache_dir() -> str:
  """$ELECTRA_JAX_CACHE, else ~/.cache/electra_jax."""
  return os.environ.get('ELECTRA_JAX_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'electra_jax')


def _hash(obj: Any) -> str:
  blob = json.dumps(obj, sort_keys=True, separators=(',', ':'))
  return hashlib.sha256(blob.encode('utf-8')).hexdigest()[:16]


def _text_files(text: str) -> list[str]:
  """Files matched by the comma-separated globs of data.text, in fixed order."""
  from electra_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  globs = [g.strip() for g in text.split(',') if g.strip()]
  files, seen = [], set()
  for g in globs:
    try:
      matches = vocab_lib.expand_globs(os.path.expanduser(g))
    except UserInputError as e:  # Say which config field, not the CLI flag.
      raise UserInputError(str(e).replace('--input', 'data.text')) from None
    for m in matches:
      m = m if '://' in m else os.path.abspath(m)
      if m not in seen:
        seen.add(m)
        files.append(m)
  return files


def _file_identity(files: list[str]) -> list[list[Any]]:
  """(path, size, mtime) of each file: what the cache key sees of the text."""
  out = []
  for f in files:
    st = epath.Path(f).stat()
    out.append([f, int(st.length), float(st.mtime)])
  return out


def _is_done(final: str) -> bool:
  return os.path.isdir(final) and os.path.isfile(final + '.done.json')


def _wait_for(final: str, timeout_s: float, log: Callable[[str], None]) -> None:
  """Polls until another process has finished building `final`."""
  log(f'data: waiting for process 0 to build {final}')
  start = last_log = time.monotonic()
  while not _is_done(final):
    now = time.monotonic()
    if now - start > timeout_s:
      raise UserInputError(
          f'gave up after {timeout_s:.0f}s waiting for {final}.done.json: '
          'is data.cache_dir on storage shared by all hosts and did process 0 '
          'start the build? (or build once with python -m '
          'electra_jax.data.build and pass --config.data.dataset_dir=)')
    if now - last_log > 300:
      log(f'data: still waiting for {final} ({now - start:.0f}s)')
      last_log = now
    time.sleep(_POLL_SECONDS)


def _export_tfds_text(name: str, text_key: str, path: str, seed: int,
                      log: Callable[[str], None]) -> str:
  """Writes the text of a seeded sample of tfds records to `path` for vocab
  training (up to TFDS_VOCAB_MAX_LINES lines / TFDS_VOCAB_MAX_BYTES)."""
  from electra_jax.data import build_units  # pylint: disable=g-import-not-at-top
  source = build_units.open_tfds_source(build_units.TfdsSpec(name, 'train', None, text_key))
  n = len(source)
  order = np.random.default_rng(seed).permutation(n)
  log(f'data: sampling the text of tfds dataset {name!r} to train a vocab')
  lines = size = 0
  tmp = f'{path}.tmp-{uuid.uuid4().hex[:8]}'
  try:
    with open(tmp, 'w', encoding='utf-8') as f:
      for start in range(0, n, 256):
        for i in order[start:start + 256]:
          text = build_units.record_text(source[int(i)], text_key)
          if isinstance(text, bytes):
            text = text.decode('utf-8', errors='replace')
          f.write(text.rstrip('\n') + '\n\n')
          lines += text.count('\n') + 1
          size += len(text)
        if lines >= TFDS_VOCAB_MAX_LINES or size >= TFDS_VOCAB_MAX_BYTES:
          break
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  # pylint: enable=protected-access
  return path


def _trained_vocab(root: str, inputs: list[str], inputs_key: Any,
                   vocab_size: int, seed: int, log: Callable[[str], None],
                   tfds_spec: tuple[str, str] | None = None) -> str:
  """A SentencePiece vocab trained on `inputs` (cached in root/vocab-<key>).

  For tfds data (`tfds_spec` = (name, text field)) a sample of its text is
  exported to root/vocab-<key>.txt first.
  """
  from electra_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  key = _hash(['vocab', CACHE_FORMAT_VERSION, inputs_key, vocab_size,
               TRAINED_VOCAB_MODEL_TYPE, TRAINED_VOCAB_LOWER_CASE, seed])
  out = os.path.join(root, f'vocab-{key}')
  model = os.path.join(out, vocab_lib.MODEL_FILE)
  if os.path.isfile(model):
    return model
  if tfds_spec is not None:
    inputs = [_export_tfds_text(*tfds_spec, f'{out}.txt', seed, log)]
  log(f'data: training a {vocab_size}-piece SentencePiece vocab on the data '
      f'-> {out}')
  return vocab_lib.train_vocab(
      inputs, out, vocab_size=vocab_size, model_type=TRAINED_VOCAB_MODEL_TYPE,
      lower_case=TRAINED_VOCAB_LOWER_CASE, seed=seed, overwrite=True)


def _remove_stale(final: str) -> None:
  """Removes what an interrupted build left at `final` (no done marker)."""
  if os.path.isdir(final):
    # Renamed aside first so a half-deleted tree never sits at `final`.
    aside = f'{final}.stale-{uuid.uuid4().hex[:8]}'
    os.rename(final, aside)
    shutil.rmtree(aside, ignore_errors=True)


def prepare_dataset(data_cfg,
                    *,
                    cache_dir: str | None = None,
                    log: Callable[[str], None] = print,
                    is_builder: bool = True,
                    wait_timeout_s: float = 24 * 3600.0) -> str:
  """Returns the directory of the built dataset that `data_cfg` asks for.

  Args:
    data_cfg: the `data` ConfigDict (fields text, dataset_dir, tfds,
      tfds_text_key, vocab, vocab_size, max_seq_length, validation_fraction,
      seed, num_workers, cache_dir; missing fields take their defaults).
    cache_dir: the cache root; overrides data_cfg.cache_dir when given.
    log: called with one-line progress messages.
    is_builder: whether this process may build; others wait for the builder
      (multi-host: pass `jax.process_index() == 0`).
    wait_timeout_s: how long a non-builder waits for the build.

  Returns:
    A dataset directory for `electra_jax.data.dataset.open_dataset`.

  Raises:
    UserInputError: more than one source set, a glob that matches nothing, a
      missing dataset_dir or vocab, or a dataset_dir incompatible with the
      config.
  """
  chosen = [name for name in _SOURCES if str(_field(data_cfg, name)).strip()]
  if len(chosen) > 1:
    names = [f'data.{n}' for n in chosen]
    raise UserInputError(
        'set only one of data.text, data.dataset_dir, data.tfds (now '
        f"{', '.join(names[:-1])} and {names[-1]} are set)")
  max_seq_length = int(_field(data_cfg, 'max_seq_length'))
  vocab = str(_field(data_cfg, 'vocab')).strip()
  if chosen == ['dataset_dir']:
    return _existing_dataset(data_cfg, vocab, max_seq_length)

  root = os.path.abspath(os.path.expanduser(
      cache_dir or str(_field(data_cfg, 'cache_dir')).strip() or
      default_cache_dir()))
  vocab_size = int(_field(data_cfg, 'vocab_size'))
  seed = int(_field(data_cfg, 'seed'))
  tfds_name, tfds_key = '', 'text'
  if not chosen:
    from electra_jax.data import demo  # pylint: disable=g-import-not-at-top
    tag = demo.demo_corpus_tag()
    corpus = os.path.join(root, 'demo', f'corpus-{tag}.txt')
    if is_builder and not os.path.isfile(corpus):
      demo.write_demo_corpus(corpus)
    vocab_size = min(vocab_size, DEMO_VOCAB_SIZE)
    log('data: no data.text / data.dataset_dir / data.tfds given, so training '
        "uses the built-in demo corpus (Python's own documentation, ~2 MB; "
        f'vocab {vocab_size} pieces unless data.vocab is set); '
        + _HOW_TO_POINT)
    inputs, inputs_key = [corpus], ['demo', tag]
    what = 'the demo corpus'
  elif chosen == ['text']:
    inputs = _text_files(str(_field(data_cfg, 'text')))
    inputs_key = ['text', _file_identity(inputs)]
    what = f'{len(inputs)} text file(s)'
  else:
    tfds_name = os.path.expanduser(str(_field(data_cfg, 'tfds')).strip())
    if ('/' in tfds_name or tfds_name.startswith('.')) and '://' not in (
        tfds_name):
      tfds_name = os.path.abspath(tfds_name)  # a prepared dataset directory
    tfds_key = str(_field(data_cfg, 'tfds_text_key')) or 'text'
    inputs, inputs_key = [], ['tfds', tfds_name, tfds_key, 'train']
    what = f'tfds dataset {tfds_name!r} (field {tfds_key!r})'

  if vocab:
    from electra_jax import tokenization  # pylint: disable=g-import-not-at-top
    vocab_key = ['vocab', tokenization.load_tokenizer(vocab).fingerprint]
  else:
    vocab_key = ['trained', vocab_size, TRAINED_VOCAB_MODEL_TYPE,
                 TRAINED_VOCAB_LOWER_CASE, seed]
  validation_fraction = float(_field(data_cfg, 'validation_fraction'))
  key_parts = {
      'format': CACHE_FORMAT_VERSION,
      'inputs': inputs_key,
      'vocab': vocab_key,
      'max_seq_length': max_seq_length,
      'validation_fraction': validation_fraction,
      'seed': seed,
  }
  final = os.path.join(root, f'dataset-{_hash(key_parts)}')
  if _is_done(final):
    log(f'data: using the cached dataset built from {what}: {final}')
    return final
  if not is_builder:
    _wait_for(final, wait_timeout_s, log)
    return final

  os.makedirs(root, exist_ok=True)
  _remove_stale(final)
  vocab_path = vocab or _trained_vocab(
      root, inputs, inputs_key, vocab_size, seed, log,
      tfds_spec=(tfds_name, tfds_key) if tfds_name else None)
  log(f'data: building the dataset from {what} (once; later runs reuse it) '
      f'-> {final}')
  from electra_jax.data import build  # pylint: disable=g-import-not-at-top
  num_workers = int(_field(data_cfg, 'num_workers')) or None
  build.build_dataset(
      inputs, vocab_path, final, max_seq_length=max_seq_length,
      num_workers=num_workers, seed=seed,
      validation_fraction=validation_fraction,
      tfds_name=tfds_name or None, tfds_text_key=tfds_key, overwrite=False)
  _write_done(final, key_parts, inputs)
  return final


def _write_done(final: str, key_parts: dict[str, Any],
                inputs: list[str]) -> None:
  """Marks `final` complete: writes final.done.json via temp + rename."""
  marker = final + '.done.json'
  tmp = f'{marker}.tmp-{uuid.uuid4().hex[:8]}'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump({'key': key_parts, 'inputs': inputs, 'created': time.time()}, f,
              indent=2)
  os.replace(tmp, marker)


def _existing_dataset(data_cfg, vocab: str, max_seq_length: int) -> str:
  """Checks data.dataset_dir against the config and returns it."""
  path = os.path.expanduser(str(_field(data_cfg, 'dataset_dir')).strip())
  if '://' not in path:
    path = os.path.abspath(path)
  if not epath.Path(path).is_dir():
    raise UserInputError(
        f'data.dataset_dir {path!r} is not a directory: pass a dataset built '
        'by python -m electra_jax.data.build')
  from electra_jax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  built = dataset_lib.open_dataset(path)
  fingerprint = None
  if vocab:
    from electra_jax import tokenization  # pylint: disable=g-import-not-at-top
    fingerprint = tokenization.load_tokenizer(vocab).fingerprint
  dataset_lib.check_compatible(built, vocab_fingerprint=fingerprint,
                               max_seq_length=max_seq_length)
  return path
