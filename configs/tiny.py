"""A toy ELECTRA for CPU demos and tests: minutes, not days.

Use: python -m electra_jax.train --config=configs/tiny.py --workdir=DIR
"""

from electra_jax.config import pretrain_config


def get_config():
  config = pretrain_config("tiny")
  config.train.log_every = 50
  config.train.eval_every = 500
  config.train.eval_batches = 8
  config.train.checkpoint_every = 500
  return config
