"""Shared command-line plumbing for `--config=FILE --workdir=DIR` entry points."""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from electra_jax import host_memory
from electra_jax.errors import run_cli


def define_config_flags(default_config: str | None = None):
  """Defines --config (locked ml_collections file, `--config.a.b=v` overrides) and --workdir."""
  config = config_flags.DEFINE_config_file(
      "config", default_config, "Config file (a .py returning a ConfigDict).",
      lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
  flags.mark_flags_as_required(["config", "workdir"])
  return config, workdir


def run(main, huge_pages: bool = False):
  """absl.app.run(main) where a UserInputError prints one `error:` line and exits 2.

  `huge_pages`: first re-execute with glibc's huge-page malloc (electra_jax/host_memory.py),
  for the commands that run training steps.
  """
  if huge_pages:
    host_memory.reexec_with_huge_pages()
  app.run(lambda argv: run_cli(main, argv), argv=sys.argv)
