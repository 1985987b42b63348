"""The ablation study's report: results.json, results.md and ablation.png.

Every file is written to a temporary name beside it and renamed, so a reader never
sees half a file.  Scores are shown x 100 (GLUE's convention: accuracy, F1, MCC and
correlations alike); held-out pretraining metrics as fractions.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

# Held-out pretraining metrics shown in the table (name in results.json, column title),
# each where the objective reports it: objective.finalize_metrics names.
TABLE_METRICS = (
    ("masked_lm_accuracy", "generator MLM acc"),
    ("disc_auc", "RTD AUC"),
    ("model_mlm_accuracy", "main MLM acc"),
    ("model_all_tokens_accuracy", "main all-tokens acc"),
)
_MISSING = "–"


def _clean(value: Any) -> Any:
  """NaN/inf -> None, recursively, so results.json is strict JSON."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_clean(v) for v in value]
  return value


def _write_atomic(path: str, data: bytes) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def write_json(path: str, data: Any) -> None:
  """Writes `data` as indented strict JSON (NaN -> null), atomically."""
  text = json.dumps(_clean(data), indent=2, allow_nan=False) + "\n"
  _write_atomic(path, text.encode("utf-8"))


def write_report(results: dict[str, Any], workdir: str) -> None:
  """Writes WORKDIR/results.json, results.md and ablation.png from `results`."""
  write_json(os.path.join(workdir, "results.json"), results)
  _write_atomic(os.path.join(workdir, "results.md"), markdown(results).encode("utf-8"))
  plot(results, os.path.join(workdir, "ablation.png"))


# ----------------------------------------------------------------------------- markdown


def _score(value: float | None) -> str:
  return _MISSING if value is None else f"{100 * value:.1f}"


def _spread(center: float | None, low: float | None, high: float | None) -> str:
  if center is None:
    return _MISSING
  if low is None or high is None or low == high:
    return _score(center)
  return f"{_score(center)} ({_score(low)}–{_score(high)})"


def _metric(value: Any) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return _MISSING
  return f"{value:.3f}"


def _task_cell(run: dict[str, Any] | None) -> str:
  if not run:
    return _MISSING
  if run.get("status") != "done":
    return "failed"
  return _spread(run["median"], run["min"], run["max"])


def _row(cells: list[str]) -> str:
  return "| " + " | ".join(cells) + " |"


def markdown(results: dict[str, Any]) -> str:
  """results.md: the comparison table, FLOPs per step, and the errors."""
  objectives = results["objectives"]
  task_names = results["tasks"]
  seeds = results["seeds"]
  metric_cols = [(name, title) for name, title in TABLE_METRICS
                 if any((e.get("pretrain_eval") or {}).get(name) is not None
                        for e in objectives.values())]
  metric_of = {}
  for task in task_names:
    for e in objectives.values():
      run = e["tasks"].get(task) or {}
      if run.get("main_metric"):
        metric_of[task] = run["main_metric"]
        break

  lines = ["# ELECTRA objective ablation (equal pretraining compute)", ""]
  if not results.get("complete"):
    lines += ["**In progress**: rows marked pending have not run yet.", ""]
  lines += [
      f"Budget per objective: {results['budget_flops']:.3g} training FLOPs "
      f"({results['budget']}); model size `{results['model_size']}`, batch "
      f"{results['batch_size']} x {results['max_seq_length']} tokens, vocab "
      f"{results['vocab_size']}.  FLOPs are analytic matmul model FLOPs, forward + "
      f"backward (`electra_jax.flops`).",
      "",
      f"Task columns: dev score x 100 of the task's main metric, median over seeds "
      f"{', '.join(str(s) for s in seeds)} (min–max).  Average: mean over tasks of the "
      f"medians (min–max of the per-seed means).  Held-out pretraining metrics as "
      f"fractions; {_MISSING} = the objective has no such head.",
      ""]
  header = (["objective", "status", "steps", "pretraining FLOPs"]
            + [title for _, title in metric_cols]
            + [f"{t} ({metric_of[t]})" if t in metric_of else t for t in task_names]
            + ["average"])
  lines.append(_row(header))
  lines.append(_row(["---", "---"] + ["---:"] * (len(header) - 2)))
  for name, e in objectives.items():
    ev = e.get("pretrain_eval") or {}
    avg = e.get("average")
    lines.append(_row(
        [f"`{name}`", e["status"], str(e["steps"]), f"{e['pretrain_flops']:.3g}"]
        + [_metric(ev.get(m)) for m, _ in metric_cols]
        + [_task_cell(e["tasks"].get(t)) for t in task_names]
        + [_spread(avg["mean_of_medians"], avg["min"], avg["max"]) if avg else _MISSING]))

  lines += ["", "## Training FLOPs per step", "",
            _row(["objective", "generator", "discriminator / main model", "of which heads",
                  "total"]),
            _row(["---"] + ["---:"] * 4)]
  for name, e in objectives.items():
    count = e["flops"]
    tower = lambda t: sum(v for k, v in count.items() if k.startswith(t + "/"))
    heads = sum(v for k, v in count.items()
                if k.startswith("discriminator/") and k.endswith("_head"))
    gen = tower("generator")
    lines.append(_row([f"`{name}`", f"{gen:.3g}" if gen else _MISSING,
                       f"{tower('discriminator'):.3g}", f"{heads:.3g}",
                       f"{count['total']:.3g}"]))

  errors = [(name, err) for name, e in objectives.items() for err in e.get("errors", [])]
  if errors:
    lines += ["", "## Errors", ""] + [f"- `{name}` {err}" for name, err in errors]
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plot


def plot(results: dict[str, Any], path: str) -> None:
  """ablation.png: left, average dev score vs pretraining FLOPs (one point per objective,
  min-max over seeds as error bars); right, the same averages side by side, since equal
  budgets put the points on top of each other."""
  # The object-oriented API with an Agg canvas: no global backend, no display needed.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(11, 4.5), dpi=110)
  FigureCanvasAgg(fig)
  ax, bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
  markers = "osD^vP*X"
  names, ys, errors, colors = [], [], [], []
  for i, (name, e) in enumerate(results["objectives"].items()):
    avg = e.get("average")
    if not avg:
      continue
    y = 100 * avg["mean_of_medians"]
    low = 100 * avg["min"] if avg["min"] is not None else y
    high = 100 * avg["max"] if avg["max"] is not None else y
    err = [max(0.0, y - low), max(0.0, high - y)]
    line = ax.errorbar([e["pretrain_flops"]], [y], yerr=[[err[0]], [err[1]]],
                       fmt=markers[i % len(markers)], capsize=4, markersize=8, label=name)
    names.append(name)
    ys.append(y)
    errors.append(err)
    colors.append(line[0].get_color())
  budget = results["budget_flops"]
  ax.axvline(budget, color="0.6", linestyle="--", linewidth=1, label="budget")
  ax.set_xlim(0, budget * 1.15)
  ax.set_xlabel("pretraining FLOPs (forward + backward, analytic)")
  n_tasks = len(results["tasks"])
  ylabel = f"average dev score x 100 ({n_tasks} task{'s' if n_tasks != 1 else ''})"
  ax.set_ylabel(ylabel)
  ax.set_title("Downstream score vs pretraining compute")
  ax.grid(True, alpha=0.3)
  ax.legend(loc="lower left", fontsize="small")

  if names:
    positions = list(range(len(names)))[::-1]  # first objective on top
    bars.barh(positions, ys, xerr=list(zip(*errors)), color=colors, alpha=0.8, capsize=4)
    bars.set_yticks(positions, names)
    low = min(y - err[0] for y, err in zip(ys, errors))
    high = max(y + err[1] for y, err in zip(ys, errors))
    pad = max(1.0, 0.15 * (high - low))
    bars.set_xlim(max(0.0, low - pad), high + pad)
    for pos, y in zip(positions, ys):
      bars.annotate(f"{y:.1f}", (y, pos), xytext=(4, 6), textcoords="offset points",
                    fontsize="small")
  else:
    for a in (ax, bars):
      a.text(0.5, 0.5, "no objective has a score yet", transform=a.transAxes,
             ha="center", va="center", color="0.4")
    bars.set_yticks([])
  bars.set_xlabel(ylabel)
  bars.set_title(f"At equal compute ({budget:.3g} FLOPs)")
  bars.grid(True, axis="x", alpha=0.3)
  fig.tight_layout()
  tmp = f"{path}.tmp-{os.getpid()}"
  fig.savefig(tmp, format="png")
  os.replace(tmp, path)
