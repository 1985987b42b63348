"""ELECTRA-Small pretraining.  Use: python -m electra_jax.train --config=configs/small.py --workdir=DIR"""

from electra_jax.config import pretrain_config


def get_config():
  return pretrain_config("small")
