"""Training curves from one or more workdirs' metrics.jsonl, as a PNG.

    python -m electra_jax.plot --workdir=runs/small [--output=FILE.png]
    python -m electra_jax.plot --workdir=runs/a --workdir=runs/b --output=compare.png \
        [--metrics='train/loss,eval/disc_auc,eval/*accuracy']

A workdir is anything holding the metrics.jsonl that `reporting.MetricWriter` appends
(a pretraining workdir, or a fine-tuning `seed_<s>/` directory); `gs://` paths are read
and written through etils.epath (which needs its Cloud Storage backend, e.g. gcsfs).
Every row is {"step": int, "time": float, "<metric>": float, ...}.

One subplot per metric group; with several runs, one colour per run (the legend names
the run by its workdir, shortened to its last distinct path components) and one line
style per metric within a subplot; with one run, one colour per metric.  Groups:

  loss        metrics whose name ends in 'loss'        (train/loss, eval/loss, ...)
  AUC         metrics whose last part contains 'auc'   (train/disc_auc, eval/disc_auc)
  accuracy    ... contains 'accuracy'                  (masked_lm_accuracy, dev accuracy)
  throughput  perf/tokens_per_s
  any other requested metric gets a subplot of its own.

By default (DEFAULT_METRICS) the curves are the total train/eval loss, train/eval
discriminator AUC, train/eval generator MLM accuracy, fine-tuning dev accuracies
(eval/<split>/accuracy) and perf/tokens_per_s -- the ones of these a run has.
`--metrics` takes a comma-separated list of names or fnmatch patterns instead (`*` for
every metric; `*` also matches '/'), and each entry must match a metric of some run.

Output: with one workdir, WORKDIR/curves.png unless --output says otherwise; comparing
several workdirs needs --output (no file is written to the current directory unasked).
The PNG is written to a temporary name and renamed, so a file at --output is complete.

Reading: a run resumed from a checkpoint appends rows for steps it had already logged
before the interruption; for each metric a step that does not increase truncates that
metric's earlier rows from that step on, so the curve shows the history the final
checkpoint actually has.  Lines that are not a JSON object with an integer 'step' (e.g.
a row cut short when the process was killed) and values that are not numbers are
skipped, and their count is printed as one warning per file; a file with no readable
row at all is an error.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import io
import json
import math
import os
import sys
from typing import Iterable, Sequence

from electra_jax.errors import UserInputError

METRICS_FILE = "metrics.jsonl"
DEFAULT_OUTPUT_NAME = "curves.png"
# Named metric groups, in subplot order: group -> y-axis label.
_GROUPS = {
    "loss": "loss",
    "AUC": "AUC",
    "accuracy": "accuracy",
    "throughput": "tokens / s",
}
# Train and held-out total loss, discriminator AUC, generator MLM accuracy, fine-tuning
# dev accuracy (eval/<split>/accuracy), throughput.
DEFAULT_METRICS = ("*/loss", "*/disc_auc", "*/masked_lm_accuracy", "eval/*/accuracy",
                   "perf/tokens_per_s")
_NOT_METRICS = ("step", "time")


@dataclasses.dataclass(frozen=True)
class Series:
  """One metric of one run: strictly increasing steps and their values (NaN allowed)."""
  steps: tuple[int, ...]
  values: tuple[float, ...]


def parse_metrics(lines: Iterable[str]) -> tuple[dict[str, Series], int]:
  """Per-metric series from metrics.jsonl lines, and the number of entries skipped.

  A line that is not a JSON object with an integer 'step' is skipped (counted once);
  so is a metric value that is not a number (counted once per value).  Blank lines
  are ignored.  When a metric's step does not increase (a resumed run re-logging steps),
  its earlier points from that step on are dropped, as described in the module doc.
  """
  points: dict[str, list[tuple[int, float]]] = {}
  skipped = 0
  for line in lines:
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:
      skipped += 1
      continue
    step = row.get("step") if isinstance(row, dict) else None
    if not isinstance(step, int) or isinstance(step, bool):
      skipped += 1
      continue
    for key, value in row.items():
      if key in _NOT_METRICS:
        continue
      if not isinstance(value, (int, float)) or isinstance(value, bool):
        skipped += 1
        continue
      series = points.setdefault(key, [])
      while series and series[-1][0] >= step:
        series.pop()
      series.append((step, float(value)))
  result = {k: Series(tuple(s for s, _ in v), tuple(x for _, x in v))
            for k, v in sorted(points.items())}
  return result, skipped


def read_series(workdir: str) -> dict[str, Series]:
  """Per-metric series of WORKDIR/metrics.jsonl (see `parse_metrics`).

  Raises UserInputError when the file is missing, empty or has no readable row;
  prints one warning line to stderr when some entries were skipped.
  """
  workdir = os.fspath(workdir)
  path = _join(workdir, METRICS_FILE)
  text = _read_text(path, workdir)
  if not text.strip():
    raise UserInputError(f"{path} is empty: the run has not logged yet (it writes a row "
                         f"every config.train.log_every steps)")
  lines = text.splitlines()
  series, skipped = parse_metrics(lines)
  if not series:
    raise UserInputError(f"{path} has no readable metrics row ({skipped} unreadable "
                         f"entries); is it a metrics.jsonl written by electra_jax?")
  if skipped:
    print(f"warning: skipped {skipped} unreadable entr{'y' if skipped == 1 else 'ies'} "
          f"in {path} (e.g. a row cut short by a killed process)", file=sys.stderr)
  return series


def metric_group(name: str) -> str:
  """The subplot a metric is drawn in: 'loss', 'AUC', 'accuracy', 'throughput' or itself."""
  last = name.rsplit("/", 1)[-1]
  if last.endswith("loss"):
    return "loss"
  if "auc" in last:
    return "AUC"
  if "accuracy" in last:
    return "accuracy"
  if name == "perf/tokens_per_s":
    return "throughput"
  return name


def select_metrics(available: Iterable[str], patterns: Sequence[str] | None = None
                   ) -> list[tuple[str, list[str]]]:
  """[(group, [metric names])] to draw, groups in subplot order, train/* names first.

  `patterns` are names or fnmatch patterns (default DEFAULT_METRICS); with explicit
  patterns, one that matches nothing in `available` is a UserInputError.
  """
  available = sorted(set(available))
  explicit = patterns is not None
  patterns = [p.strip() for p in (DEFAULT_METRICS if patterns is None else patterns)]
  if explicit and not [p for p in patterns if p]:
    raise UserInputError("--metrics is empty; give metric names such as train/loss,"
                         "eval/disc_auc (or '*' for all)")
  chosen = set()
  for p in patterns:
    if not p:
      continue
    hits = [m for m in available if fnmatch.fnmatchcase(m, p)]
    if explicit and not hits:
      raise UserInputError(f"unknown metric {p!r}: the runs have {', '.join(available)}")
    chosen.update(hits)
  if not chosen:
    raise UserInputError(f"none of the default metrics ({', '.join(DEFAULT_METRICS)}) is in "
                         f"these runs; choose with --metrics= from {', '.join(available)}")
  groups: dict[str, list[str]] = {}
  for m in sorted(chosen, key=lambda m: (not m.startswith("train/"), m)):
    groups.setdefault(metric_group(m), []).append(m)
  order = list(_GROUPS) + sorted(g for g in groups if g not in _GROUPS)
  return [(g, groups[g]) for g in order if g in groups]


def run_labels(workdirs: Sequence[str]) -> list[str]:
  """Legend names: each workdir's last path component, or more of it where those clash."""
  parts = [_normalize(w).split("/") for w in workdirs]
  for n in range(1, max(len(p) for p in parts) + 1):
    labels = ["/".join(p[-n:]) for p in parts]
    if len(set(labels)) == len(labels):
      return labels
  return [_normalize(w) for w in workdirs]


def default_output(workdirs: Sequence[str]) -> str:
  """WORKDIR/curves.png for one run; several runs need an explicit output."""
  if len(workdirs) == 1:
    return _join(workdirs[0], DEFAULT_OUTPUT_NAME)
  raise UserInputError(f"comparing {len(workdirs)} runs needs --output=FILE.png "
                       f"(a single run defaults to WORKDIR/{DEFAULT_OUTPUT_NAME})")


def plot_runs(workdirs: Sequence[str] | str, output: str | None = None,
              metrics: Sequence[str] | None = None) -> str:
  """Draws the runs' curves into the PNG `output` and returns its path.

  workdirs: one or more directories holding metrics.jsonl.  output: a .png path, or
  None for `default_output(workdirs)`.  metrics: names or fnmatch patterns, or None for
  DEFAULT_METRICS.  Raises UserInputError for a missing/empty/unreadable metrics file,
  a metric matching nothing or a bad output path.
  """
  if isinstance(workdirs, (str, os.PathLike)):
    workdirs = [workdirs]
  workdirs = [os.fspath(w) for w in workdirs]
  output = None if output is None else os.fspath(output)
  if not workdirs:
    raise UserInputError("no workdir given: pass --workdir=DIR (repeat it to compare runs)")
  output = default_output(workdirs) if output is None else output
  if not output.lower().endswith(".png"):
    raise UserInputError(f"--output={output} must be a .png file")
  runs = [read_series(w) for w in workdirs]
  groups = select_metrics({m for r in runs for m in r}, metrics)
  png = render_png(groups, runs, run_labels(workdirs))
  _write_bytes(output, png)
  return output


def render_png(groups: list[tuple[str, list[str]]], runs: Sequence[dict[str, Series]],
               labels: Sequence[str]) -> bytes:
  """The PNG bytes of `build_figure(groups, runs, labels)`."""
  buf = io.BytesIO()
  build_figure(groups, runs, labels).savefig(buf, format="png", dpi=100)
  return buf.getvalue()


def build_figure(groups: list[tuple[str, list[str]]], runs: Sequence[dict[str, Series]],
                 labels: Sequence[str]):
  """A matplotlib Figure: one subplot per group (in order; unused cells hidden), one
  colour per run and one line style per metric (a single run: one colour per metric).

  It has an Agg canvas of its own, so the caller's matplotlib backend (e.g. a
  notebook's inline one) is left alone.  In a notebook, show `plot_runs`' file with
  IPython.display.Image(path).
  """
  from matplotlib import rcParams  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  ncols = 1 if len(groups) == 1 else 2
  nrows = math.ceil(len(groups) / ncols)
  fig = Figure(figsize=(6.4 * ncols, 4.0 * nrows), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  colors = rcParams["axes.prop_cycle"].by_key()["color"]
  styles = ("-", "--", ":", "-.")
  for ax, (group, names) in zip(axes, groups):
    for i, (run, label) in enumerate(zip(runs, labels)):
      for j, name in enumerate(names):
        s = run.get(name)
        if s is None:
          continue
        if len(runs) == 1:
          color, style, line_label = colors[j % len(colors)], "-", name
        else:
          color, style = colors[i % len(colors)], styles[j % len(styles)]
          line_label = label if len(names) == 1 else f"{label}: {name}"
        ax.plot(s.steps, s.values, color=color, linestyle=style, label=line_label,
                marker="o" if len(s.steps) <= 20 else None, markersize=3)
    ax.set_title(names[0] if len(names) == 1 and group not in _GROUPS else group)
    ax.set_xlabel("step")
    ax.set_ylabel(_GROUPS.get(group, group.rsplit("/", 1)[-1]))
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize="small")
  for ax in axes[len(groups):]:
    ax.set_visible(False)
  return fig


def _normalize(path: str) -> str:
  if "://" in path:
    return path.rstrip("/")
  return os.path.abspath(os.path.expanduser(path)).replace(os.sep, "/")


def _join(directory: str, name: str) -> str:
  return directory.rstrip("/") + "/" + name if "://" in directory else os.path.join(
      os.path.expanduser(directory), name)


def _read_text(path: str, workdir: str) -> str:
  if "://" in path:
    from etils import epath  # pylint: disable=g-import-not-at-top
    p = epath.Path(path)
    if not p.exists():
      raise UserInputError(f"no {METRICS_FILE} in {workdir}: pass a training or fine-tuning "
                           f"(seed_<s>/) workdir")
    return p.read_text(encoding="utf-8")
  if not os.path.isdir(os.path.expanduser(workdir)):
    raise UserInputError(f"workdir {workdir} does not exist or is not a directory")
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      return f.read()
  except FileNotFoundError:
    raise UserInputError(f"no {METRICS_FILE} in {workdir}: pass a training or fine-tuning "
                         f"(seed_<s>/) workdir") from None


def _write_bytes(path: str, data: bytes):
  """Writes atomically: a temporary file beside `path`, then a rename (GCS: one object)."""
  if "://" in path:
    from etils import epath  # pylint: disable=g-import-not-at-top
    epath.Path(path).write_bytes(data)
    return
  path = os.path.expanduser(path)
  parent = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except OSError as e:
    raise UserInputError(f"cannot write {path} ({e.strerror}); choose another --output") from e


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if len(argv) > 1:
    raise UserInputError(f"unexpected arguments {' '.join(argv[1:])}; use --workdir=DIR "
                         f"(repeatable), --output=FILE.png, --metrics=a,b")
  if not f.workdir:
    raise UserInputError("pass --workdir=DIR (repeat it to compare runs)")
  out = plot_runs(f.workdir, f.output, f.metrics)
  print(f"wrote {out}")


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_multi_string("workdir", None, "A run's directory holding metrics.jsonl "
                            "(repeat to compare runs).")
  flags.DEFINE_string("output", None, "PNG to write; default WORKDIR/curves.png for one "
                      "run, required for several.")
  flags.DEFINE_list("metrics", None, "Comma-separated metric names or fnmatch patterns "
                    f"(default: {','.join(DEFAULT_METRICS)}).")


if __name__ == "__main__":
  from electra_jax import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(main)
