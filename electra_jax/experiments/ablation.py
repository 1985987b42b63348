"""The paper's objective ablation (Table 5): every objective at the same pretraining compute.

    python -m electra_jax.experiments.ablation --config=configs/ablation.py:cpu \
        --workdir=DIR --config.pretrain.data.text='corpus/*.txt' --config.task_dir=tasks/

`run_study(config, workdir)` is the whole job, importable for tests.  For each
objective in config.objectives it
  1. sets pretrain.objective and gives the run the same compute budget in FLOPs:
     steps = budget // (training FLOPs of one step of that objective), counted by
     `electra_jax.flops` (analytic matmul FLOPs, forward + backward), so every
     objective's steps x FLOPs/step lies within one step of the budget.  The budget is
     config.budget_flops, or the FLOPs of config.budget_electra_steps 'electra' steps
     of the same config;
  2. pretrains with `electra_jax.train.train_and_evaluate` into DIR/pretrain/<objective>;
  3. fine-tunes the result on every task (`electra_jax.finetune.finetune_and_evaluate`,
     all of config.finetune.seeds) into DIR/finetune/<objective>/<task>;
and after each objective rewrites the report (`ablation_report.write_report`):
  DIR/results.json   the budget, and per objective: steps, FLOPs (per step, total,
                     by part), held-out pretraining metrics, per task the dev main
                     metric per seed with median/mean/std/min/max, the average over
                     tasks, and errors; "complete" is true once every objective ran;
  DIR/results.md     the same as a Markdown table;
  DIR/ablation.png   average dev score vs pretraining FLOPs, one point per objective.

Rerunning the same command reuses finished work: a finished pretraining run is
marked by DIR/pretrain/<objective>/ablation_pretrain.json (written after the run;
an interrupted run resumes from its checkpoint instead), and fine-tuning reuses its
finished seeds.  A run whose step count no longer matches the budget is refused.
A failure in one objective (or one task) is recorded in results.json with its
error and the study moves on; the command then exits with status 1.  Bad
configuration is reported before any work starts (`error: ...`, status 2).

The command (not `run_study`) also turns on JAX's persistent compilation cache in
DIR/xla_cache for a local DIR unless one is configured already
(JAX_COMPILATION_CACHE_DIR): every objective fine-tunes the same encoder shape, so
each task's programs compile once for the whole study, and a rerun compiles nothing.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import traceback
from typing import Any

import ml_collections

from electra_jax import flops
from electra_jax.errors import UserInputError
from electra_jax.experiments import ablation_report

# Written in a pretraining workdir once its run has finished (marks it reusable).
PRETRAIN_DONE_FILE = "ablation_pretrain.json"
# Objective whose steps state a budget given as config.budget_electra_steps.
REFERENCE_OBJECTIVE = "electra"


# ----------------------------------------------------------------------------- plan


def parse_list(value: str, name: str) -> list[str]:
  """'a, b,c' -> ['a', 'b', 'c']; UserInputError when empty or with duplicates."""
  items = [p.strip() for p in str(value).split(",") if p.strip()]
  if not items:
    raise UserInputError(f"config.{name} is empty; give a comma-separated list")
  if len(set(items)) != len(items):
    raise UserInputError(f"config.{name}={value!r} lists an entry twice")
  return items


def parse_objectives(value: str) -> list[str]:
  """config.objectives as a list; every name must have a FLOP count."""
  objectives = parse_list(value, "objectives")
  unknown = [o for o in objectives if o not in flops.OBJECTIVES]
  if unknown:
    raise UserInputError(f"config.objectives has unknown objective(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(flops.OBJECTIVES)}")
  return objectives


def objective_config(config: ml_collections.ConfigDict, objective: str,
                     steps: int) -> ml_collections.ConfigDict:
  """A copy of config.pretrain with `objective` and train.steps set."""
  cfg = copy.deepcopy(config.pretrain)
  cfg.objective = objective
  cfg.train.steps = int(steps)
  return cfg


def resolve_budget(config: ml_collections.ConfigDict, vocab_size: int) -> tuple[int, str]:
  """(budget in FLOPs, how it was stated) from config.budget_flops / budget_electra_steps."""
  if config.budget_flops < 0 or config.budget_electra_steps < 0:
    raise UserInputError("config.budget_flops and config.budget_electra_steps must be >= 0")
  if config.budget_flops > 0:
    return int(config.budget_flops), f"{int(config.budget_flops):.3g} FLOPs"
  if config.budget_electra_steps <= 0:
    raise UserInputError("set the compute budget: --config.budget_flops=FLOPS or "
                         "--config.budget_electra_steps=STEPS (FLOPs of that many "
                         f"'{REFERENCE_OBJECTIVE}' steps)")
  reference = objective_config(config, REFERENCE_OBJECTIVE, config.budget_electra_steps)
  per_step = flops.train_flops_per_step(reference, vocab_size)["total"]
  return (config.budget_electra_steps * per_step,
          f"the FLOPs of {config.budget_electra_steps} '{REFERENCE_OBJECTIVE}' steps")


def steps_for_budget(budget: int, flops_per_step: int) -> int:
  """The most whole steps of `flops_per_step` that fit in `budget` (exact integers)."""
  return int(budget) // int(flops_per_step)


def task_data_dir(task_dir: str, task: str) -> str:
  """The directory of `task` under `task_dir`: TASK itself, or GLUE's name for it
  (SST-2 for sst2, ...).  'tfds' passes through (GLUE from tensorflow-datasets)."""
  from electra_jax import finetune, tasks  # pylint: disable=g-import-not-at-top
  if task_dir == finetune.TFDS:
    return task_dir
  path = os.path.join(task_dir, task)
  if os.path.isdir(path):
    return path
  want = tasks.glue_task_name(task)
  if want is not None and os.path.isdir(task_dir):
    for name in sorted(os.listdir(task_dir)):
      if tasks.glue_task_name(name) == want and os.path.isdir(os.path.join(task_dir, name)):
        return os.path.join(task_dir, name)
  raise UserInputError(f"no directory for task {task!r} in config.task_dir={task_dir} "
                       f"(expected {path}" + (", or GLUE's name for it such as SST-2)"
                                              if want else ")"))


def _check_inputs(config) -> None:
  data = config.pretrain.data
  if not any(str(data[k]).strip() for k in ("text", "dataset_dir", "tfds")):
    raise UserInputError(
        "the study needs pretraining data: set --config.pretrain.data.text=GLOB (e.g. "
        "'../shared/corpus/*.txt'), --config.pretrain.data.dataset_dir or "
        "--config.pretrain.data.tfds")
  if not config.task_dir:
    raise UserInputError(
        "set --config.task_dir to the directory with one sub-directory per task (e.g. "
        "../shared/tasks or glue_data), or 'tfds' for GLUE from tensorflow-datasets")
  if config.task_dir != "tfds" and not os.path.isdir(config.task_dir):
    raise UserInputError(f"config.task_dir={config.task_dir} is not a directory")
  if config.pretrain.train.stop_at:
    raise UserInputError("config.pretrain.train.stop_at must be 0: the study sets each "
                         "objective's steps from the budget")


def _vocab_size(pretrain_cfg) -> int:
  """The vocab size of the pretraining data (built and cached now if needed)."""
  import jax  # pylint: disable=g-import-not-at-top
  from electra_jax.data.dataset import open_dataset  # pylint: disable=g-import-not-at-top
  from electra_jax.data.select import prepare_dataset  # pylint: disable=g-import-not-at-top
  from electra_jax.tokenization import load_tokenizer  # pylint: disable=g-import-not-at-top
  built = open_dataset(prepare_dataset(pretrain_cfg.data,
                                       is_builder=jax.process_index() == 0))
  return load_tokenizer(built.vocab_path).vocab_size


# ----------------------------------------------------------------------------- steps


def _error_text(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0] if lines else ''}"[:500]


def _read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _pretrain(cfg, pre_dir: str, expected: dict[str, Any], is_main: bool
              ) -> tuple[dict[str, float], float]:
  """Runs (or reuses) one objective's pretraining: (held-out metrics, seconds it took)."""
  from electra_jax import train  # pylint: disable=g-import-not-at-top
  marker = os.path.join(pre_dir, PRETRAIN_DONE_FILE)
  if os.path.exists(marker):
    done = _read_json(marker)
    if {k: done.get(k) for k in expected} == expected:
      print(f"{cfg.objective}: reusing the finished pretraining in {pre_dir}", flush=True)
      return done["eval"], done.get("seconds", 0.0)
    raise UserInputError(
        f"{pre_dir} holds a finished run with {json.dumps({k: done.get(k) for k in expected})} "
        f"but the study now asks for {json.dumps(expected)}; use a new --workdir or "
        f"delete {pre_dir}")
  saved_path = os.path.join(pre_dir, "config.json")
  if os.path.exists(saved_path):
    saved_steps = _read_json(saved_path).get("train", {}).get("steps")
    if saved_steps != expected["steps"]:
      raise UserInputError(
          f"{pre_dir} holds an unfinished run of {saved_steps} steps but the budget now "
          f"gives {expected['steps']}; use a new --workdir or delete {pre_dir}")
  print(f"{cfg.objective}: pretraining {expected['steps']} steps into {pre_dir}", flush=True)
  t0 = time.perf_counter()
  final = train.train_and_evaluate(cfg, pre_dir)
  seconds = time.perf_counter() - t0
  metrics = {k.split("/", 1)[-1]: float(v) for k, v in final.items()}
  if is_main:
    ablation_report.write_json(marker, {**expected, "eval": metrics,
                                        "seconds": round(seconds, 1)})
  return metrics, seconds


def _finetune(config, objective: str, task: str, data_dir: str, pre_dir: str,
              ft_dir: str, workdir: str) -> dict[str, Any]:
  """Fine-tunes one objective's model on one task: the task's entry in results.json."""
  from electra_jax import finetune  # pylint: disable=g-import-not-at-top
  cfg = copy.deepcopy(config.finetune)
  cfg.task, cfg.data_dir, cfg.init = task, data_dir, pre_dir
  print(f"{objective}: fine-tuning {task} into {ft_dir}", flush=True)
  t0 = time.perf_counter()
  res = finetune.finetune_and_evaluate(cfg, ft_dir)
  split, metric = res["main_metric"].split("/", 1)
  per_seed = {seed: run[split][metric] for seed, run in res["per_seed"].items()}
  return {"status": "done", "main_metric": res["main_metric"], **res["main"],
          "per_seed": per_seed, "seconds": round(time.perf_counter() - t0, 1),
          "results": os.path.relpath(os.path.join(ft_dir, "results.json"), workdir)}


def _average(entry: dict[str, Any], task_names: list[str]) -> dict[str, Any] | None:
  """Mean over tasks of the median dev score, and of each seed's score; None unless
  every task finished."""
  runs = [entry["tasks"].get(t, {}) for t in task_names]
  if not runs or any(r.get("status") != "done" for r in runs):
    return None
  seeds = sorted(set.intersection(*(set(r["per_seed"]) for r in runs)), key=int)
  per_seed = {s: sum(r["per_seed"][s] for r in runs) / len(runs) for s in seeds}
  return {"mean_of_medians": sum(r["median"] for r in runs) / len(runs),
          "per_seed": per_seed,
          "min": min(per_seed.values()) if per_seed else None,
          "max": max(per_seed.values()) if per_seed else None}


# ----------------------------------------------------------------------------- study


def run_study(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the ablation in `workdir` (reusing finished work); returns results.json's content.

  Failures of single objectives or tasks are recorded in the results (status
  'failed', 'errors'), not raised; bad configuration raises UserInputError first.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from electra_jax import finetune  # pylint: disable=g-import-not-at-top

  # ------------------------------------------------------------------ plan
  objectives = parse_objectives(config.objectives)
  task_names = parse_list(config.tasks, "tasks")
  seeds = finetune.parse_seeds(config.finetune.seeds)
  _check_inputs(config)
  task_dirs = {t: task_data_dir(config.task_dir, t) for t in task_names}
  workdir = os.path.abspath(workdir)
  is_main = jax.process_index() == 0
  if is_main:
    os.makedirs(workdir, exist_ok=True)
  vocab_size = _vocab_size(config.pretrain)
  budget, stated = resolve_budget(config, vocab_size)

  results: dict[str, Any] = {
      "complete": False,
      "budget_flops": budget,
      "budget": stated,
      "vocab_size": vocab_size,
      "model_size": config.pretrain.model.size,
      "batch_size": config.pretrain.train.batch_size,
      "max_seq_length": config.pretrain.data.max_seq_length,
      "tasks": task_names,
      "seeds": seeds,
      "objectives": {},
      "config": json.loads(config.to_json_best_effort()),
  }
  for objective in objectives:
    count = flops.train_flops_per_step(objective_config(config, objective, 1), vocab_size)
    steps = steps_for_budget(budget, count["total"])
    if steps < 1:
      raise UserInputError(
          f"the budget ({budget:.3g} FLOPs) is less than one '{objective}' step "
          f"({count['total']:.3g} FLOPs); raise config.budget_flops or "
          f"config.budget_electra_steps")
    results["objectives"][objective] = {
        "status": "pending", "steps": steps, "flops_per_step": count["total"],
        "pretrain_flops": steps * count["total"], "flops": count,
        "pretrain_workdir": os.path.join("pretrain", objective),
        "pretrain_eval": None, "tasks": {}, "average": None, "errors": []}
  print("ablation plan: " + "; ".join(
      f"{o} {e['steps']} steps x {e['flops_per_step']:.3g} FLOPs"
      for o, e in results["objectives"].items()) + f" (budget {budget:.3g} FLOPs = {stated})",
        flush=True)
  if is_main:
    ablation_report.write_report(results, workdir)

  # ------------------------------------------------------------------ run
  for objective in objectives:
    entry = results["objectives"][objective]
    pre_dir = os.path.join(workdir, entry["pretrain_workdir"])
    expected = {"objective": objective, "steps": entry["steps"],
                "flops_per_step": entry["flops_per_step"]}
    try:
      entry["pretrain_eval"], entry["pretrain_seconds"] = _pretrain(
          objective_config(config, objective, entry["steps"]), pre_dir, expected, is_main)
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc()
      entry["errors"].append(f"pretraining: {_error_text(e)}")
    else:
      for task in task_names:
        ft_dir = os.path.join(workdir, "finetune", objective, task)
        try:
          entry["tasks"][task] = _finetune(config, objective, task, task_dirs[task], pre_dir,
                                           ft_dir, workdir)
        except Exception as e:  # pylint: disable=broad-except
          traceback.print_exc()
          entry["tasks"][task] = {"status": "failed", "error": _error_text(e)}
          entry["errors"].append(f"fine-tuning {task}: {_error_text(e)}")
      entry["average"] = _average(entry, task_names)
    entry["status"] = "failed" if entry["errors"] else "done"
    if is_main:
      ablation_report.write_report(results, workdir)

  results["complete"] = True
  results["failed"] = [o for o, e in results["objectives"].items() if e["status"] == "failed"]
  if is_main:
    ablation_report.write_report(results, workdir)
  print(f"ablation results: {os.path.join(workdir, 'results.md')}", flush=True)
  return results


def _use_compilation_cache(workdir: str) -> None:
  """Points JAX's persistent compilation cache at WORKDIR/xla_cache unless one is set."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.config.jax_compilation_cache_dir or "://" in workdir:
    return
  path = os.path.join(os.path.abspath(workdir), "xla_cache")
  jax.config.update("jax_compilation_cache_dir", path)
  print(f"XLA compilation cache: {path}", flush=True)


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
  """CLI body: runs the study; exits with status 1 when an objective failed."""
  _use_compilation_cache(workdir)
  results = run_study(config, workdir)
  if results["failed"]:
    print(f"error: {len(results['failed'])} of {len(results['objectives'])} objective(s) "
          f"failed ({', '.join(results['failed'])}); the errors are in "
          f"{os.path.join(os.path.abspath(workdir), 'results.json')}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  from electra_jax import cli  # pylint: disable=g-import-not-at-top
  _CONFIG, _WORKDIR = cli.define_config_flags()
  cli.run(lambda argv: main(_CONFIG.value, _WORKDIR.value))
