"""ELECTRA-Large pretraining.  Use: python -m electra_jax.train --config=configs/large.py --workdir=DIR"""

from electra_jax.config import pretrain_config


def get_config():
  return pretrain_config("large")
