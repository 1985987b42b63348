"""electra_jax.plot: metrics.jsonl (written by the real MetricWriter) -> series -> PNG."""

import math
import os
import struct
import subprocess
import sys
import types

import pytest

from electra_jax import plot
from electra_jax.errors import UserInputError
from electra_jax.reporting import MetricWriter


class _NoTensorBoard:
  """Stands in for tensorboardX.SummaryWriter: importing tensorboardX imports torch when it
  is installed (~5 s); metrics.jsonl is still written by the real MetricWriter."""

  def __init__(self, logdir):
    del logdir

  def add_scalar(self, *args):
    pass

  def flush(self):
    pass

  def close(self):
    pass


@pytest.fixture(autouse=True)
def _fast_metric_writer(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorboardX",
                      types.SimpleNamespace(SummaryWriter=_NoTensorBoard))


def _pretraining_run(workdir, scale, steps=(100, 200, 300, 400)):
  """Writes a run like electra_jax.train does; returns {metric: [(step, value)]}."""
  expected = {}

  def write(w, step, scalars):
    w.write(step, scalars)
    for k, v in scalars.items():
      expected.setdefault(k, []).append((step, float(v)))

  w = MetricWriter(str(workdir), steps[-1], "off")
  write(w, 0, {"eval/loss": 30.0 * scale, "eval/disc_auc": 0.5,
               "eval/masked_lm_accuracy": 0.01})
  for s in steps:
    write(w, s, {"train/loss": scale * (10 + 20 / s), "train/disc_auc": 0.9 - 10 / s,
                 "train/masked_lm_accuracy": 0.5 - 5 / s, "train/learning_rate": 1e-4 * s,
                 "perf/tokens_per_s": 1000.0 * scale + s})
    if s % 200 == 0:
      write(w, s, {"eval/loss": scale * (11 + 20 / s), "eval/disc_auc": 0.85 - 10 / s,
                   "eval/masked_lm_accuracy": 0.45 - 5 / s})
  w.close()
  return expected


def _as_points(series):
  return list(zip(series.steps, series.values))


def test_read_series_returns_exactly_what_was_written(tmp_path, capsys):
  expected = _pretraining_run(tmp_path / "a", scale=1.0)
  series = plot.read_series(str(tmp_path / "a"))
  assert set(series) == set(expected)
  for name, points in expected.items():
    assert _as_points(series[name]) == points, name
  assert "warning" not in capsys.readouterr().err


def test_resumed_run_keeps_the_history_of_the_final_checkpoint(tmp_path, capsys):
  w = MetricWriter(str(tmp_path), 500, "off")
  for s in (100, 200, 300, 400):  # crashed after logging 400; last checkpoint at 200
    w.write(s, {"train/loss": float(s)})
  w.write(200, {"eval/loss": 1.0})
  w.close()
  w = MetricWriter(str(tmp_path), 500, "off")  # resumed: appends to the same file
  for s in (300, 400, 500):
    w.write(s, {"train/loss": s + 0.5})
  w.close()
  series = plot.read_series(str(tmp_path))
  assert _as_points(series["train/loss"]) == [(100, 100.0), (200, 200.0), (300, 300.5),
                                              (400, 400.5), (500, 500.5)]
  assert _as_points(series["eval/loss"]) == [(200, 1.0)]


def test_unreadable_entries_are_skipped_and_counted(tmp_path, capsys):
  _pretraining_run(tmp_path, scale=1.0, steps=(100,))
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 200, "train/loss": 7.0, "note": "text"}\n')  # one bad value
    f.write('["not", "a", "row"]\n')
    f.write('{"time": 1.0, "train/loss": 3.0}\n')  # no step
    f.write('{"step": 300, "train/loss": NaN}\n')  # what json.dumps writes for nan
    f.write('\n')
    f.write('{"step": 400, "train/lo')  # cut short by a killed process
  series = plot.read_series(str(tmp_path))
  loss = series["train/loss"]
  assert loss.steps == (100, 200, 300)
  assert loss.values[1] == 7.0 and math.isnan(loss.values[2])
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "skipped 4 unreadable entries" in err


def test_parse_metrics_is_pure():
  lines = ['{"step": 1, "time": 5.0, "a/x": 1}', '{"step": 2, "a/x": 2.5, "b/y": true}']
  series, skipped = plot.parse_metrics(lines)
  assert series == {"a/x": plot.Series((1, 2), (1.0, 2.5))}
  assert skipped == 1  # a bool is not a metric value


def test_metric_groups_and_default_selection():
  assert [plot.metric_group(m) for m in (
      "train/loss", "eval/disc_loss", "eval/disc_auc", "train/masked_lm_accuracy",
      "eval/dev/accuracy", "perf/tokens_per_s", "train/learning_rate")] == [
          "loss", "loss", "AUC", "accuracy", "accuracy", "throughput", "train/learning_rate"]
  pretraining = ["eval/disc_auc", "eval/loss", "eval/masked_lm_accuracy", "eval/disc_loss",
                 "perf/eta_s", "perf/tokens_per_s", "train/disc_auc", "train/learning_rate",
                 "train/loss", "train/masked_lm_accuracy", "train/sampled_masked_lm_accuracy"]
  assert plot.select_metrics(pretraining) == [
      ("loss", ["train/loss", "eval/loss"]),
      ("AUC", ["train/disc_auc", "eval/disc_auc"]),
      ("accuracy", ["train/masked_lm_accuracy", "eval/masked_lm_accuracy"]),
      ("throughput", ["perf/tokens_per_s"])]
  finetuning = ["train/loss", "train/learning_rate", "eval/dev/accuracy", "eval/dev/f1"]
  assert plot.select_metrics(finetuning) == [("loss", ["train/loss"]),
                                             ("accuracy", ["eval/dev/accuracy"])]
  assert plot.select_metrics(pretraining, ["train/learning_rate", "eval/disc_*"]) == [
      ("loss", ["eval/disc_loss"]), ("AUC", ["eval/disc_auc"]),
      ("train/learning_rate", ["train/learning_rate"])]
  with pytest.raises(UserInputError, match="unknown metric 'train/lr'.*train/learning_rate"):
    plot.select_metrics(pretraining, ["train/loss", "train/lr"])
  with pytest.raises(UserInputError, match="none of the default metrics"):
    plot.select_metrics(["perf/eta_s"])


def test_run_labels_disambiguate():
  assert plot.run_labels(["runs/small", "other/base/"]) == ["small", "base"]
  assert plot.run_labels(["a/sst2/seed_1", "b/sst2/seed_1", "b/sst2/seed_2"]) == [
      "a/sst2/seed_1", "b/sst2/seed_1", "b/sst2/seed_2"]
  assert plot.run_labels(["gs://bkt/x/run", "gs://bkt/y/run"]) == ["x/run", "y/run"]


def _png_size(path):
  data = open(path, "rb").read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
  width, height = struct.unpack(">II", data[16:24])
  return len(data), width, height


def test_plot_two_runs(tmp_path):
  a, b = tmp_path / "runs" / "small", tmp_path / "runs" / "wide"
  expected = {"small": _pretraining_run(a, 1.0), "wide": _pretraining_run(b, 2.0)}
  out = tmp_path / "out" / "compare.png"
  assert plot.plot_runs([str(a), str(b)], str(out)) == str(out)
  nbytes, width, height = _png_size(out)
  assert 10_000 < nbytes < 2_000_000 and (width, height) == (1280, 800)  # 2 x 2 subplots
  assert os.listdir(out.parent) == ["compare.png"]  # no temporary left behind

  # What the figure holds: per subplot, per line, the written numbers.
  runs = [plot.read_series(str(a)), plot.read_series(str(b))]
  groups = plot.select_metrics(set(runs[0]) | set(runs[1]))
  fig = plot.build_figure(groups, runs, ["small", "wide"])
  visible = [ax for ax in fig.axes if ax.get_visible()]
  assert [ax.get_title() for ax in visible] == ["loss", "AUC", "accuracy", "throughput"]
  drawn = {}
  for ax in visible:
    for line in ax.get_lines():
      drawn[(ax.get_title(), line.get_label())] = list(zip(line.get_xdata(),
                                                           line.get_ydata()))
  assert set(drawn) == {
      ("loss", "small: train/loss"), ("loss", "small: eval/loss"),
      ("loss", "wide: train/loss"), ("loss", "wide: eval/loss"),
      ("AUC", "small: train/disc_auc"), ("AUC", "small: eval/disc_auc"),
      ("AUC", "wide: train/disc_auc"), ("AUC", "wide: eval/disc_auc"),
      ("accuracy", "small: train/masked_lm_accuracy"),
      ("accuracy", "small: eval/masked_lm_accuracy"),
      ("accuracy", "wide: train/masked_lm_accuracy"),
      ("accuracy", "wide: eval/masked_lm_accuracy"),
      ("throughput", "small"), ("throughput", "wide")}
  for (group, label), points in drawn.items():
    run, _, metric = label.partition(": ")
    metric = metric or "perf/tokens_per_s"
    assert points == expected[run][metric], (group, label)
  lines = {l.get_label(): l for l in visible[0].get_lines()}
  assert lines["small: train/loss"].get_color() != lines["wide: train/loss"].get_color()
  assert lines["small: train/loss"].get_linestyle() != lines["small: eval/loss"].get_linestyle()


def test_single_run_defaults_to_workdir_curves_png_and_finetuning_seed_dirs(tmp_path):
  seed_dir = tmp_path / "sst2" / "seed_1"
  w = MetricWriter(str(seed_dir), 30, "off")  # as electra_jax.finetune writes a seed
  w.write(10, {"train/loss": 0.7, "train/learning_rate": 1e-4})
  w.write(20, {"train/loss": 0.5, "train/learning_rate": 5e-5})
  w.write(30, {"train/loss": 0.4, "train/learning_rate": 0.0, "eval/dev/accuracy": 0.81})
  w.close()
  out = plot.plot_runs(seed_dir)
  assert out == str(seed_dir / "curves.png")
  nbytes, width, height = _png_size(out)
  assert nbytes > 5_000 and (width, height) == (1280, 400)  # loss, accuracy side by side


@pytest.mark.parametrize("setup,call,message", [
    ("missing_dir", lambda d: plot.plot_runs(d / "nope"), "does not exist"),
    ("no_file", lambda d: plot.plot_runs(d), "no metrics.jsonl in"),
    ("empty", lambda d: plot.plot_runs(d), "is empty"),
    ("garbage", lambda d: plot.plot_runs(d), "no readable metrics row"),
    ("ok", lambda d: plot.plot_runs(d, metrics=["eval/bleu"]), "unknown metric 'eval/bleu'"),
    ("ok", lambda d: plot.plot_runs(d, d / "x.jpg"), "must be a .png file"),
    ("ok", lambda d: plot.plot_runs([d, d]), "needs --output"),
    ("ok", lambda d: plot.plot_runs([]), "no workdir given"),
])
def test_errors(tmp_path, setup, call, message):
  if setup == "empty":
    (tmp_path / "metrics.jsonl").write_text("")
  elif setup == "garbage":
    (tmp_path / "metrics.jsonl").write_text("not json\n{\"step\": \"x\"}\n")
  elif setup == "ok":
    _pretraining_run(tmp_path, 1.0, steps=(100,))
  with pytest.raises(UserInputError, match=message) as e:
    call(tmp_path)
  assert "\n" not in str(e.value)


def test_cli(tmp_path):
  _pretraining_run(tmp_path / "run", 1.0)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [os.path.dirname(os.path.dirname(os.path.abspath(plot.__file__)))] + sys.path))
  out = tmp_path / "loss.png"
  r = subprocess.run([sys.executable, "-m", "electra_jax.plot", f"--workdir={tmp_path / 'run'}",
                      f"--output={out}", "--metrics=train/loss,eval/loss"],
                     capture_output=True, text=True, env=env, check=False)
  assert r.returncode == 0, r.stderr
  assert r.stdout.strip() == f"wrote {out}"
  assert _png_size(out)[1:] == (640, 400)  # one subplot
  r = subprocess.run([sys.executable, "-m", "electra_jax.plot",
                      f"--workdir={tmp_path / 'run'}", "--metrics=nope"],
                     capture_output=True, text=True, env=env, check=False)
  assert r.returncode == 2 and r.stderr.startswith("error: unknown metric 'nope'")
  assert r.stderr.count("\n") == 1
