"""How the process uses host memory: huge pages for XLA:CPU's buffers, giving memory back.

XLA:CPU allocates each step's temporaries afresh (about 1 GB for ELECTRA-Small at batch
32 x 128) with glibc's malloc, which maps large blocks straight from the kernel and
unmaps them on free.  Every step then faults in a quarter of a million fresh 4 KiB
pages: 13% of the step's CPU time went to the kernel.  glibc's `glibc.malloc.hugetlb=1`
tunable marks malloc's memory for transparent huge pages (2 MiB), which cuts the faults
and the TLB misses: the ELECTRA-Small CPU step runs ~17% faster
(benchmarks/train_step.md).  PyTorch, which caches its own blocks, gains nothing from it.

Tunables are read only when a process starts, so the command-line entry points
(`electra_jax.train`, `electra_jax.finetune`) re-execute themselves once with the tunable
added, before any work is done.  Set ELECTRA_JAX_HUGE_PAGES=0 to opt out.
"""

import ctypes
import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "ELECTRA_JAX_HUGE_PAGES"
_MIN_GLIBC = (2, 35)  # the first glibc with glibc.malloc.hugetlb


def _glibc_version() -> tuple[int, ...] | None:
  lib, version = platform.libc_ver()
  if lib != "glibc" or not version:
    return None
  try:
    return tuple(int(p) for p in version.split(".")[:2])
  except ValueError:
    return None


def huge_page_environ(environ: dict[str, str],
                      glibc: tuple[int, ...] | None) -> dict[str, str] | None:
  """The environment to re-execute with so malloc uses huge pages, or None to stay.

  None when: not glibc or too old a glibc, the user opted out (ELECTRA_JAX_HUGE_PAGES=0),
  or GLIBC_TUNABLES already sets the tunable (either by us or by the user's own choice).
  """
  if glibc is None or glibc < _MIN_GLIBC:
    return None
  if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
    return None
  current = environ.get("GLIBC_TUNABLES", "")
  if any(item.split("=", 1)[0] == TUNABLE for item in current.split(":") if item):
    return None
  new = dict(environ)
  new["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}=1" if current else f"{TUNABLE}=1"
  return new


def reexec_with_huge_pages() -> None:
  """Re-executes this command (same interpreter, flags and arguments) with huge pages.

  Returns (doing nothing) where `huge_page_environ` says to stay; call it first thing in
  a command-line entry point, before any device or thread is started.
  """
  environ = huge_page_environ(dict(os.environ), _glibc_version())
  if environ is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, list(sys.orig_argv), environ)


def release_freed() -> None:
  """Returns memory that the process freed to the OS (glibc's malloc_trim; else a no-op)."""
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
    pass
