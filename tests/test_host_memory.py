"""Host memory: huge-page malloc for XLA:CPU's per-step buffers, and malloc_trim."""

import ctypes
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from electra_jax import host_memory

REPO = pathlib.Path(__file__).resolve().parents[1]
GLIBC = (2, 36)


def test_huge_page_environ_adds_the_tunable_and_keeps_the_rest():
  env = host_memory.huge_page_environ({"PATH": "/bin"}, GLIBC)
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  env = host_memory.huge_page_environ(
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, GLIBC)
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("environ,glibc", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, GLIBC),  # already re-executed
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0:x=1"}, GLIBC),  # the user's own choice
    ({"ELECTRA_JAX_HUGE_PAGES": "0"}, GLIBC),  # opted out
    ({"ELECTRA_JAX_HUGE_PAGES": "off"}, GLIBC),
    ({}, (2, 34)),  # glibc before the tunable existed
    ({}, None),  # not glibc (macOS, musl)
])
def test_huge_page_environ_stays_put(environ, glibc):
  assert host_memory.huge_page_environ(environ, glibc) is None


_CHILD = textwrap.dedent("""
    import json, os, sys
    from electra_jax import host_memory
    with open(sys.argv[1], "a") as f:
      f.write("start\\n")  # one line per execution of this program
    host_memory.reexec_with_huge_pages()
    import ctypes
    libc = ctypes.CDLL("libc.so.6")  # plain malloc (numpy asks for huge pages by itself)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    size = 256 * 2 ** 20  # one block, which malloc maps straight from the kernel
    libc.memset(libc.malloc(size), 1, size)
    with open("/proc/self/smaps_rollup") as f:
      huge = [int(l.split()[1]) for l in f if l.startswith("AnonHugePages:")][0]
    print(json.dumps([os.environ.get("GLIBC_TUNABLES", ""), sys.argv[2:], huge // 1024]))
""")


def _run_child(tmp_path, **env):
  log = tmp_path / "starts.txt"
  log.write_text("")
  environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  environ.update(env, PYTHONPATH=str(REPO))
  out = subprocess.run([sys.executable, "-c", _CHILD, str(log), "a", "--b=c"], env=environ,
                       capture_output=True, text=True, check=True, cwd=tmp_path)
  tunables, args, huge_mib = json.loads(out.stdout.splitlines()[-1])
  return tunables, args, huge_mib, log.read_text().count("start")


def _thp_mode() -> str:
  try:
    text = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
  except OSError:
    return ""
  return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else ""


@pytest.mark.skipif(host_memory._glibc_version() is None  # pylint: disable=protected-access
                    or host_memory._glibc_version() < (2, 35),  # pylint: disable=protected-access
                    reason="needs glibc >= 2.35")
def test_reexec_runs_the_same_command_once_with_huge_pages(tmp_path):
  tunables, args, huge_mib, starts = _run_child(tmp_path)
  assert tunables == "glibc.malloc.hugetlb=1"
  assert args == ["a", "--b=c"]  # the same arguments reach the re-executed program
  assert starts == 2  # the original and one re-execution, no loop
  off_tunables, _, off_huge_mib, off_starts = _run_child(tmp_path, ELECTRA_JAX_HUGE_PAGES="0")
  assert (off_tunables, off_starts) == ("", 1)
  if _thp_mode() in ("madvise", "always"):
    assert huge_mib >= 128, huge_mib  # the buffer really sits on 2 MiB pages
  if _thp_mode() == "madvise":
    assert off_huge_mib < 64, off_huge_mib  # and only because of the tunable


def test_release_freed_returns_freed_heap_to_the_os():
  """Memory freed in the middle of glibc's heap (as the compiler leaves it) is handed back."""
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc_trim  # pylint: disable=pointless-statement
  except (OSError, AttributeError):
    pytest.skip("not glibc")
  libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

  def rss():
    with open("/proc/self/statm", encoding="ascii") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

  chunk, count = 64 * 1024, 3200  # 200 MiB in chunks below the mmap threshold
  blocks = [libc.malloc(chunk) for _ in range(count)]
  guard = libc.malloc(chunk)  # keeps the freed blocks below the top of the heap
  for b in blocks:
    libc.memset(b, 1, chunk)
  for b in blocks:
    libc.free(b)
  before = rss()
  host_memory.release_freed()
  after = rss()
  libc.free(guard)
  assert before - after > 100 * 2 ** 20, (before, after)
