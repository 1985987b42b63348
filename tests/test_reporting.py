"""MetricWriter: what it writes, and that starting it stays cheap."""

import importlib.util
import json
import subprocess
import sys

import pytest

from electra_jax.reporting import MetricWriter


def test_metrics_jsonl_rows_and_tensorboard_events(tmp_path):
  w = MetricWriter(str(tmp_path), 10, "off")
  w.write(1, {"train/loss": 2.5})
  w.write(2, {"eval/disc_auc": 0.75})
  w.close()
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert all(isinstance(r.pop("time"), float) for r in rows)  # wall-clock stamp per row
  assert rows == [{"step": 1, "train/loss": 2.5}, {"step": 2, "eval/disc_auc": 0.75}]
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_starting_a_writer_does_not_import_torch(tmp_path):
  """tensorboardX would import torch (5-10 s) at every training start."""
  code = (f"import sys; from electra_jax.reporting import MetricWriter; "
          f"w = MetricWriter({str(tmp_path)!r}, 1, 'off'); w.write(1, {{'x': 1.0}}); w.close(); "
          f"assert 'torch' not in sys.modules, 'torch imported'; import torch")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
