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

The Flax <-> HF tensor-name mapping lives in `hf_params`, reading and writing HF model
directories (config.json, weights, tokenizer files) in `hf_files`.  torch, transformers
and safetensors are imported inside functions only (the `hf` extra).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np

from electra_jax import workdir as workdir_io
from electra_jax.errors import UserInputError
from electra_jax.hf_files import (INSTALL_HINT, SAFETENSORS, atomic_dir, encoder_config_from_hf,
                                  find_vocab, hf_config, model_dir, new_dir, read_hf_tensors,
                                  read_json, vocab_lower_case, write_json, write_tokenizer)
from electra_jax.hf_params import (base_entries, check_unexpected, embedding_entries,
                                   flat_params, flat_shapes, fresh_params, from_hf,
                                   gen_emb_key, nested_params, to_hf, tower_entries)

SUBDIRS = ('discriminator', 'generator')


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
  return {'discriminator': to_hf(flat, tower_entries(disc, 'discriminator', disc_emb_key)),
          'generator': to_hf(flat, tower_entries(gen, 'generator',
                                                  gen_emb_key(embedding_sharing)))}

def export(workdir: str, output_dir: str) -> str:
  """Writes OUTPUT_DIR/{discriminator,generator} from WORKDIR's latest checkpoint."""
  output_dir = new_dir(output_dir, 'output_dir')
  w = read_workdir(workdir)
  try:
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserInputError(f'export needs safetensors; {INSTALL_HINT}') from e
  tensors = hf_tensors(w.params, w.disc, w.gen, w.embedding_sharing)
  with atomic_dir(output_dir) as tmp:
    for role, cfg, arch in (('discriminator', w.disc, 'ElectraForPreTraining'),
                            ('generator', w.gen, 'ElectraForMaskedLM')):
      dest = os.path.join(tmp, role)
      os.makedirs(dest)
      write_json(os.path.join(dest, 'config.json'), hf_config(cfg, arch, w.tokenizer.pad_id))
      save_file(tensors[role], os.path.join(dest, SAFETENSORS), metadata={'format': 'pt'})
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
  return load_tokenizer(found, lower_case=vocab_lower_case(path)) if found else None


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
  cfg = encoder_config_from_hf(read_json(os.path.join(path, 'config.json')),
                               f'{path}/config.json')
  tokenizer = _tokenizer_for(path, None)
  if tokenizer is None:
    raise UserInputError(f'Hugging Face directory {path} has no vocab.txt or *.model; '
                         f'import it with `python -m electra_jax.hf import --vocab=FILE`')
  _check_vocab(tokenizer, cfg, f'{path}/config.json')
  shapes = flat_shapes(abstract_params(ElectraEncoder(cfg)))
  flat = from_hf(read_hf_tensors(path, allow_pickle),
                 base_entries(cfg, 'embeddings', 'discriminator'), shapes,
                 f'discriminator {path}')
  print(f'init: Hugging Face {path} (discriminator {cfg.num_layers} layers, hidden '
        f'{cfg.hidden_size}, vocab {tokenizer.vocab_size})', flush=True)
  return cfg, nested_params(flat, cfg.scan_layers), tokenizer

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
  workdir = new_dir(workdir, 'workdir')
  disc_dir = model_dir(hf_dir, 'discriminator')
  disc = encoder_config_from_hf(read_json(os.path.join(disc_dir, 'config.json')),
                                f'{disc_dir}/config.json')
  tokenizer = _tokenizer_for(disc_dir, vocab)
  _check_vocab(tokenizer, disc, f'{disc_dir}/config.json')
  disc_t = read_hf_tensors(disc_dir, allow_pickle)
  gen_dir = gen_t = None
  gen_size = GENERATOR_SIZE[_size_name(disc)]
  if generator_dir:
    gen_dir = model_dir(generator_dir, 'generator')
    gen_size = _generator_size(disc, read_json(os.path.join(gen_dir, 'config.json')),
                               f'generator {gen_dir}/config.json')
    gen_t = read_hf_tensors(gen_dir, allow_pickle)
  base_names = [hf for hf, _, _ in embedding_entries('embeddings')]
  sharing = 'tied' if gen_t is None or _same(disc_t, gen_t, base_names) else 'untied'
  params = _import_params(disc, generator_config(disc, gen_size), sharing,
                          (disc_t, disc_dir), (gen_t, gen_dir), seed)
  vocab_copy = (os.path.join(workdir, 'vocab', os.path.basename(tokenizer.path))
                if tokenizer else '')
  config = _pretrain_config(disc, gen_size, sharing, vocab_copy)
  with atomic_dir(workdir) as tmp:
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
  entries = tower_entries(disc, 'discriminator', 'embeddings')
  check_unexpected(disc_t, entries, 'discriminator', disc_dir)
  if not _has_head(disc_t):
    entries = base_entries(disc, 'embeddings', 'discriminator')
  flat = from_hf(disc_t, entries, shapes, f'discriminator {disc_dir}')
  if gen_t is not None:
    entries = tower_entries(gen, 'generator', gen_emb_key(sharing))
    check_unexpected(gen_t, entries, 'generator', gen_dir)
    _check_tied_head(gen_t, gen_dir)
    gen_flat = from_hf(gen_t, entries, shapes, f'generator {gen_dir}')
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
