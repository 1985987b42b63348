"""Where training metrics go: stdout (or a progress bar), TensorBoard, metrics.jsonl.

Only process 0 writes.  `MetricWriter.write(step, scalars)` takes plain floats:
the training loop converts device values one step late so the host never waits
for the device just to log.
"""

import json
import math
import os
import sys
import time

import jax


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
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    self._tb = _summary_writer_class()(os.path.join(workdir, "tensorboard"))
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
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
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
