"""Shared test setup: a per-session persistent XLA compilation cache.

Several tests compile the same tiny training step (fresh run, resumed run,
refused run); caching compiled executables across them keeps the suite fast
without changing what any test checks.
"""

import os
import tempfile

import jax

_CACHE = os.environ.get("ELECTRA_JAX_TEST_XLA_CACHE") or tempfile.mkdtemp(prefix="xla-cache-")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
