"""Runs a few tiny training steps and saves the final params: the worker behind
tests/test_parallel.py's device-count and process-count equivalence tests.

    python tests/parallel_run.py OUT.npz WORKDIR CORPUS_GLOB CACHE_DIR DATA FSDP [ACCUM]

Device and process counts come from the environment (XLA_FLAGS, JAX_* variables).
"""

import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import _tiny_config  # noqa: E402  pylint: disable=g-import-not-at-top


def config_for(corpus_glob, cache_dir, data, fsdp, accum=1):
  """A 1-layer, 32-wide model without dropout, 3 steps of batch 16."""
  c = _tiny_config(corpus_glob, cache_dir, steps=3, log_every=1, eval_every=3,
                   checkpoint_every=3, eval_batches=1, batch_size=16, grad_accum_steps=accum)
  m = c.model
  m.num_layers, m.hidden_size, m.embedding_size, m.num_heads = 1, 32, 16, 1
  m.intermediate_size, m.dropout_rate, m.attention_dropout_rate = 64, 0.0, 0.0
  c.model.generator_size = 0.5
  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 1
  c.mesh.data, c.mesh.fsdp = data, fsdp
  c.data.num_workers = 0
  return c


def main():
  out, workdir, corpus_glob, cache_dir, data, fsdp = sys.argv[1:7]
  accum = int(sys.argv[7]) if len(sys.argv) > 7 else 1
  from electra_jax import parallel, train  # pylint: disable=g-import-not-at-top
  config = config_for(corpus_glob, cache_dir, int(data), int(fsdp), accum)
  parallel.initialize_distributed(config.distributed)
  metrics = train.train_and_evaluate(config, workdir)
  step, params = train.restore_params(workdir, _abstract_params(config, workdir))
  if jax.process_index() == 0:
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(params)}
    flat["__step"] = np.asarray(step)
    flat["__eval_loss"] = np.asarray(metrics["eval/loss"])
    flat["__devices"] = np.asarray(jax.device_count())
    flat["__processes"] = np.asarray(jax.process_count())
    mesh = parallel.make_mesh(config.mesh)
    specs = jax.tree.leaves(parallel.state_shardings(_abstract_params(config, workdir), mesh))
    flat["__sharded_leaves"] = np.asarray(sum(s.spec != jax.sharding.PartitionSpec()
                                              for s in specs))
    np.savez(out, **flat)


def _abstract_params(config, workdir):
  from electra_jax import train  # pylint: disable=g-import-not-at-top
  from electra_jax.model import (ElectraPretrainingModel, abstract_params,  # pylint: disable=g-import-not-at-top
                                 encoder_config_from, generator_config)
  _, tokenizer = train.read_workdir_config(workdir)
  disc = encoder_config_from(config.model, tokenizer.vocab_size)
  model = ElectraPretrainingModel(disc, generator_config(disc, config.model.generator_size))
  return abstract_params(model)


if __name__ == "__main__":
  main()
