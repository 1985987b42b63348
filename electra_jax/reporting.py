"""Where training metrics go: stdout (or a progress bar), TensorBoard, metrics.jsonl.

Only process 0 writes.  `MetricWriter.write(step, scalars)` takes plain floats:
the training loop converts device values one step late so the host never waits
for the device just to log.

The workdir may be local or on an object store (gs://): locally metrics.jsonl is
appended to and TensorBoard events are written in place; remotely, where nothing can
be appended to, metrics.jsonl is rewritten whole at every write and the events are
written to a local temporary directory and copied to WORKDIR/tensorboard.
"""

import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid

import jax
from etils import epath

from electra_jax import workdir as workdir_io


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch.

  tensorboardX imports torch, when installed (the `hf` extra), only to recognise torch
  tensors, which we never log; that import costs 5-10 s at every start.  Hiding torch
  while tensorboardX loads avoids it; torch stays importable afterwards.
  """
  if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
      import tensorboardX  # pylint: disable=g-import-not-at-top,unused-import
    finally:
      del sys.modules["torch"]
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  return SummaryWriter


class _AppendedLines:
  """A local text file, appended to and flushed line by line."""

  def __init__(self, path: str):
    self._file = epath.Path(path).open("a", encoding="utf-8")

  def add(self, line: str):
    self._file.write(line + "\n")
    self._file.flush()

  def close(self):
    self._file.close()


class _RewrittenLines:
  """A text file on an object store, which cannot be appended to: the lines already
  there (a resumed run's history) are kept, and the whole file is rewritten atomically
  at every line (cheap: a line is logged every ~100 steps)."""

  def __init__(self, path: str):
    self._path = path
    p = epath.Path(path)
    self._text = p.read_text(encoding="utf-8") if p.exists() else ""
    if self._text and not self._text.endswith("\n"):
      self._text += "\n"

  def add(self, line: str):
    self._text += line + "\n"
    workdir_io.write_text_atomic(self._path, self._text)

  def close(self):
    pass


class _MirroredEvents:
  """TensorBoard events for a remote `logdir`: tensorboardX writes through local file
  APIs, so events go to a local temporary directory and every flush copies the new or
  changed event files to `logdir`.  tensorboardX writes from a background thread, so a
  flush copies what has reached the local file by then; close copies the rest."""

  def __init__(self, logdir: str):
    self._logdir = logdir
    self._local = tempfile.mkdtemp(prefix="electra_jax-tensorboard-")
    self._copied: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns)
    # Event files are named by the second and the host: the suffix keeps a resumed
    # run's file from replacing an earlier one of the same second on `logdir`.
    self._writer = _summary_writer_class()(self._local,
                                           filename_suffix=f".{uuid.uuid4().hex[:8]}")

  def add_scalar(self, tag: str, value: float, step: int):
    self._writer.add_scalar(tag, value, step)

  def flush(self):
    self._writer.flush()
    self._copy_changed()

  def close(self):
    self._writer.close()
    self._copy_changed()
    shutil.rmtree(self._local, ignore_errors=True)

  def _copy_changed(self):
    for root, _, names in os.walk(self._local):
      for name in names:
        local = os.path.join(root, name)
        stat = os.stat(local)
        rel = os.path.relpath(local, self._local)
        if self._copied.get(rel) != (stat.st_size, stat.st_mtime_ns):
          dest = epath.Path(self._logdir) / rel
          dest.parent.mkdir(parents=True, exist_ok=True)
          epath.Path(local).copy(dest, overwrite=True)
          self._copied[rel] = (stat.st_size, stat.st_mtime_ns)


class MetricWriter:
  """Writes scalars to metrics.jsonl, TensorBoard event files and the terminal."""

  def __init__(self, workdir: str, total_steps: int, progress_bar: str = "auto",
               initial_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.total_steps = total_steps
    self._jsonl = None
    self._tb = None
    self._bar = None
    if not self.enabled:
      return
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    jsonl_path = os.fspath(epath.Path(workdir) / "metrics.jsonl")
    tb_dir = os.fspath(epath.Path(workdir) / "tensorboard")
    if workdir_io.is_remote(workdir):
      self._jsonl = _RewrittenLines(jsonl_path)
      self._tb = _MirroredEvents(tb_dir)
    else:
      self._jsonl = _AppendedLines(jsonl_path)
      self._tb = _summary_writer_class()(tb_dir)
    use_bar = {"on": True, "off": False}.get(progress_bar, sys.stdout.isatty())
    if use_bar:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total_steps, initial=initial_step, unit="step",
                       dynamic_ncols=True)

  def write(self, step: int, scalars: dict[str, float]):
    if not self.enabled:
      return
    row = {"step": int(step), "time": time.time()}
    row.update({k: float(v) for k, v in sorted(scalars.items())})
    self._jsonl.add(json.dumps(row))
    for k, v in scalars.items():
      if math.isfinite(float(v)):
        self._tb.add_scalar(k, float(v), int(step))
    self._tb.flush()
    line = self._summary(step, scalars)
    if self._bar is not None:
      self._bar.write(line)
    else:
      print(line, flush=True)

  def advance(self, step: int):
    """Moves the progress bar (if any) to `step`."""
    if self._bar is not None and step > self._bar.n:
      self._bar.update(step - self._bar.n)

  def _summary(self, step, scalars):
    keys = ("train/loss", "train/masked_lm_accuracy", "train/disc_auc", "eval/loss",
            "eval/masked_lm_accuracy", "eval/disc_auc", "eval/disc_accuracy",
            "train/learning_rate", "train/grad_norm", "perf/tokens_per_s")
    parts = [f"step {step}/{self.total_steps}"]
    for k in keys:
      if k in scalars:
        v = scalars[k]
        parts.append(f"{k}={v:.4g}")
    if "perf/eta_s" in scalars:
      parts.append(f"eta={format_duration(scalars['perf/eta_s'])}")
    return " ".join(parts)

  def close(self):
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.close()
    if self._jsonl is not None:
      self._jsonl.close()
