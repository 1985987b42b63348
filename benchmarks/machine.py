"""What the benchmark scripts report about the machine and process they ran in."""

import os
import platform


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (else platform.processor())."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def rss_bytes() -> int:
  """This process's resident set size now (Linux /proc)."""
  with open("/proc/self/statm", encoding="ascii") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
