"""Paths and whole-file writes of a run's workdir, local or on an object store.

A workdir is a local directory or a URL such as `gs://bucket/run`; every read and
write of its files goes through etils.epath, which serves `gs://` through gcsfs (or
TensorFlow's gfile when TensorFlow is installed).  Object stores cannot append to a
file, and their rename is a copy and a delete, so whole files are written under a
temporary name and renamed into place: a reader never sees half a file.
"""

import os
from typing import Callable

from etils import epath

TMP_SUFFIX = ".tmp"


def is_remote(path) -> bool:
  """True for a URL (gs://bucket/dir, s3://...), False for a local path."""
  return "://" in os.fspath(path)


def resolve(path) -> str:
  """A local path made absolute (~ expanded); a remote one as given (no trailing /)."""
  path = os.fspath(path)
  if is_remote(path):
    return path.rstrip("/")
  return os.path.abspath(os.path.expanduser(path))


def checkpoint_dir(workdir: str) -> str:
  """WORKDIR/checkpoints: orbax's directory of checkpoints/<step>/."""
  return os.fspath(epath.Path(workdir) / "checkpoints")


def write_text_atomic(path, text: str):
  """Writes `path` (UTF-8) whole: a temporary file beside it, then a rename."""
  _write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def copy_atomic(src, dest):
  """Copies the file `src` to `dest` (either local or remote) the same way."""
  _write_atomic(dest, lambda tmp: epath.Path(src).copy(tmp, overwrite=True))


def _write_atomic(path, write: Callable[[epath.Path], object]):
  path = epath.Path(path)
  tmp = epath.Path(os.fspath(path) + TMP_SUFFIX)
  path.parent.mkdir(parents=True, exist_ok=True)
  try:
    write(tmp)
    tmp.replace(path)
  except BaseException:
    try:
      tmp.unlink(missing_ok=True)
    except Exception:  # pylint: disable=broad-except
      pass  # the write's own error is the one to report
    raise
