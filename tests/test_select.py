"""Tests for electra_jax.data.select (data choice + build cache) and demo."""

import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from electra_jax.data import build
from electra_jax.data import demo
from electra_jax.data import pipeline
from electra_jax.data import select
from electra_jax.data.dataset import open_dataset
from electra_jax.errors import UserInputError
from electra_jax.tokenization import load_tokenizer

CORPUS = str(pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'corpus')


def data_config(**overrides):
  """The lead's config.data fields (tiny vocab and sequence length)."""
  c = ml_collections.ConfigDict({
      'text': '', 'dataset_dir': '', 'tfds': '', 'tfds_text_key': 'text',
      'vocab': '', 'vocab_size': 500, 'max_seq_length': 32,
      'validation_fraction': 0.1, 'seed': 0, 'num_workers': 1,
      'cache_dir': '',
  })
  c.update(overrides)
  return c


def _head_documents(src, dst, max_bytes):
  """Copies whole documents from the start of `src` up to ~max_bytes."""
  with open(src, encoding='utf-8') as f:
    docs = f.read(max_bytes * 2).split('\n\n')
  out, size = [], 0
  for d in docs[:-1]:
    if size > max_bytes:
      break
    out.append(d)
    size += len(d)
  with open(dst, 'w', encoding='utf-8') as f:
    f.write('\n\n'.join(out) + '\n')


@pytest.fixture(scope='module')
def text_dir(tmp_path_factory):
  """~200 KB of the shared corpus in two files (a few dozen documents)."""
  d = tmp_path_factory.mktemp('text')
  _head_documents(f'{CORPUS}/sotu.txt', d / 'sotu.txt', 150_000)
  _head_documents(f'{CORPUS}/bible_kjv.txt', d / 'kjv.txt', 50_000)
  return d


class BuildCounter:
  """Wraps build.build_dataset to count real builds."""

  def __init__(self, monkeypatch):
    self.calls = 0
    self._real = build.build_dataset
    monkeypatch.setattr(build, 'build_dataset', self)

  def __call__(self, *args, **kwargs):
    self.calls += 1
    return self._real(*args, **kwargs)


def test_text_builds_once_then_hits_the_cache(text_dir, tmp_path, monkeypatch):
  builds = BuildCounter(monkeypatch)
  cfg = data_config(text=f'{text_dir}/sotu.txt,{text_dir}/*.txt')
  logs = []
  path = select.prepare_dataset(cfg, cache_dir=str(tmp_path / 'cache'),
                                log=logs.append)
  assert builds.calls == 1
  assert os.path.isfile(path + '.done.json')
  built = open_dataset(path)
  assert built.max_seq_length == 32
  assert built.num_examples['train'] > 0
  assert built.num_examples['validation'] > 0

  # The trained vocab has the requested size and the examples use it.
  tok = load_tokenizer(built.vocab_path)
  assert tok.vocab_size == 500
  assert built.vocab_fingerprint == tok.fingerprint

  # The pipeline reads the real tfds data source.
  it = pipeline.train_iterator(built.sources['train'], global_batch_size=8,
                               seed=0, process_index=0, process_count=1)
  batch = next(it)
  assert batch['input_ids'].shape == (8, 32)
  assert batch['input_ids'].dtype == np.int32
  assert (batch['input_ids'][:, 0] == tok.cls_id).all()
  assert batch['input_ids'].max() < 500
  evals = pipeline.eval_batches(built.sources['validation'],
                                global_batch_size=4, num_batches=2,
                                process_index=0, process_count=1)
  assert [b['input_ids'].shape for b in evals] == [(4, 32)] * 2

  # The same files in the same order (spelled differently): reused.
  logs.clear()
  again = select.prepare_dataset(
      data_config(text=f' {text_dir}/sotu.txt , {text_dir}/kjv.txt'),
      cache_dir=str(tmp_path / 'cache'), log=logs.append)
  assert again == path and builds.calls == 1
  assert any('cached' in l for l in logs)

  # The file order or a setting the examples depend on: another dataset.
  reordered = select.prepare_dataset(
      data_config(text=f'{text_dir}/*.txt'),
      cache_dir=str(tmp_path / 'cache'), log=logs.append)
  assert reordered != path and builds.calls == 2
  other = select.prepare_dataset(
      data_config(text=f'{text_dir}/sotu.txt,{text_dir}/*.txt',
                  max_seq_length=24),
      cache_dir=str(tmp_path / 'cache'), log=logs.append)
  assert other != path and builds.calls == 3
  assert open_dataset(other).max_seq_length == 24

  # A changed input file: rebuilt.
  with open(text_dir / 'kjv.txt', 'a', encoding='utf-8') as f:
    f.write('\nAnd it came to pass that the file changed.\n')
  changed = select.prepare_dataset(
      data_config(text=f'{text_dir}/sotu.txt,{text_dir}/*.txt'),
      cache_dir=str(tmp_path / 'cache'), log=logs.append)
  assert changed not in (path, reordered, other) and builds.calls == 4


def test_interrupted_build_is_not_reused(text_dir, tmp_path, monkeypatch):
  cache = str(tmp_path / 'cache')
  vocab = select.prepare_dataset(  # a dataset whose vocab we reuse below
      data_config(text=f'{text_dir}/kjv.txt'), cache_dir=cache, log=print)
  vocab_path = open_dataset(vocab).vocab_path
  cfg = data_config(text=f'{text_dir}/kjv.txt', vocab=vocab_path, seed=1)

  def crash(inputs, vocab_path, output_dir, **kwargs):
    os.makedirs(output_dir)  # leaves something behind, then dies
    with open(os.path.join(output_dir, 'partial'), 'w') as f:
      f.write('x')
    raise KeyboardInterrupt

  real = build.build_dataset
  monkeypatch.setattr(build, 'build_dataset', crash)
  with pytest.raises(KeyboardInterrupt):
    select.prepare_dataset(cfg, cache_dir=cache, log=print)
  monkeypatch.setattr(build, 'build_dataset', real)
  builds = BuildCounter(monkeypatch)
  path = select.prepare_dataset(cfg, cache_dir=cache, log=print)
  assert builds.calls == 1
  assert not os.path.exists(os.path.join(path, 'partial'))
  assert len(open_dataset(path).sources['train']) > 0

  # A non-builder waits for the marker and gives up with a clear message.
  os.remove(path + '.done.json')
  monkeypatch.setattr(select, '_POLL_SECONDS', 0.01)
  with pytest.raises(UserInputError, match='waiting for'):
    select.prepare_dataset(cfg, cache_dir=cache, log=print, is_builder=False,
                           wait_timeout_s=0.05)


def test_dataset_dir_is_checked_and_returned(text_dir, tmp_path):
  path = select.prepare_dataset(data_config(text=f'{text_dir}/kjv.txt'),
                                cache_dir=str(tmp_path / 'cache'), log=print)
  assert select.prepare_dataset(data_config(dataset_dir=path)) == path
  with pytest.raises(UserInputError):
    select.prepare_dataset(data_config(dataset_dir=path, max_seq_length=64))
  with pytest.raises(UserInputError, match='is not a directory'):
    select.prepare_dataset(data_config(dataset_dir=str(tmp_path / 'nope')))


def test_bad_choices_are_clear_errors(tmp_path):
  with pytest.raises(UserInputError,
                     match=r'only one of .*data.text and data.dataset_dir'):
    select.prepare_dataset(data_config(text='a.txt', dataset_dir='d'))
  with pytest.raises(UserInputError,
                     match='data.text, data.dataset_dir and data.tfds are'):
    select.prepare_dataset(data_config(text='a.txt', tfds='x', dataset_dir='d'))
  with pytest.raises(UserInputError,
                     match=r"data.text glob '.*nothing\*.txt' matched no"):
    select.prepare_dataset(data_config(text=f'{tmp_path}/nothing*.txt'),
                           cache_dir=str(tmp_path))


def test_no_source_uses_the_demo_corpus(tmp_path, monkeypatch):
  """Selection logic only: a tiny stand-in for the corpus keeps this fast."""
  def small_corpus(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      f.write(open(f'{CORPUS}/sotu.txt').read(60_000).rsplit('\n\n', 1)[0])
    return path

  monkeypatch.setattr(demo, 'write_demo_corpus', small_corpus)
  logs = []
  cfg = ml_collections.ConfigDict({'max_seq_length': 32, 'vocab_size': 300,
                                   'num_workers': 1})  # other fields missing
  path = select.prepare_dataset(cfg, cache_dir=str(tmp_path), log=logs.append)
  demo_lines = [l for l in logs if 'built-in demo corpus' in l]
  assert len(demo_lines) == 1
  assert "--config.data.text='path/*.txt'" in demo_lines[0]
  assert '--config.data.dataset_dir=' in demo_lines[0]
  assert open_dataset(path).max_seq_length == 32
  assert select.prepare_dataset(cfg, cache_dir=str(tmp_path),
                                log=logs.append) == path


class SotuText(tfds.core.GeneratorBasedBuilder):
  """A small tfds text dataset (ArrayRecord, written without TensorFlow)."""

  VERSION = tfds.core.Version('1.0.0')

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({'body': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    with open(f'{CORPUS}/sotu.txt', encoding='utf-8') as f:
      docs = f.read(80_000).split('\n\n')[:-1]
    for i, doc in enumerate(docs):
      yield i, {'body': doc}


def test_tfds_source_trains_a_vocab_builds_and_caches(tmp_path, monkeypatch,
                                                     tempdir):  # its tfds builder's leftover
  SotuText(data_dir=str(tmp_path / 'tfds'),
           file_format='array_record').download_and_prepare(
               download_dir=str(tmp_path / 'dl'))
  builds = BuildCounter(monkeypatch)
  cfg = data_config(tfds=str(tmp_path / 'tfds' / 'sotu_text' / '1.0.0'),
                    tfds_text_key='body', vocab_size=300)
  path = select.prepare_dataset(cfg, cache_dir=str(tmp_path / 'c'), log=print)
  built = open_dataset(path)
  assert built.metadata['vocab_size'] == 300
  assert built.metadata['tfds_text_key'] == 'body'
  assert len(built.sources['train']) > 100
  assert select.prepare_dataset(cfg, cache_dir=str(tmp_path / 'c'),
                                log=print) == path
  assert builds.calls == 1
  assert 'tensorflow' not in sys.modules


def test_cache_dir_defaults(monkeypatch, tmp_path):
  monkeypatch.setenv('ELECTRA_JAX_CACHE', str(tmp_path / 'env'))
  assert select.default_cache_dir() == str(tmp_path / 'env')
  monkeypatch.delenv('ELECTRA_JAX_CACHE')
  assert select.default_cache_dir() == os.path.expanduser(
      '~/.cache/electra_jax')


def test_demo_corpus_is_deterministic_and_substantial(tmp_path):
  path = demo.write_demo_corpus(str(tmp_path / 'a' / 'demo.txt'))
  # Another interpreter with another hash seed writes the same bytes.
  code = ('import sys; from electra_jax.data import demo; '
          'demo.write_demo_corpus(sys.argv[1])')
  env = dict(os.environ, PYTHONHASHSEED='12345')
  subprocess.run([sys.executable, '-c', code, str(tmp_path / 'b.txt')],
                 check=True, env=env)
  data = open(path, 'rb').read()
  assert data == open(tmp_path / 'b.txt', 'rb').read()

  text = data.decode('utf-8')
  docs = text.rstrip('\n').split('\n\n')
  assert len(text) > 1_000_000 and len(docs) > 200
  assert '\n\n\n' not in text and not text.startswith('\n')
  for doc in docs:
    for line in doc.split('\n'):
      assert line and line == line.strip()
  assert 'assert' in text and 'Python' in text
  assert not any(l.startswith('>>>') for l in text.split('\n'))
