"""electra_jax: ELECTRA pretraining, fine-tuning and export in JAX/Flax."""

__version__ = "0.1.0"
