"""What fine-tuning keeps in its workdir (local or gs://, through etils.epath): each
seed's settings.json, checkpoints and metrics.json, and results.json with the summary
over seeds and the best seed's predictions/ (see the layout in finetune.py)."""

import json
import os
import shutil
import statistics

import jax
import numpy as np
from etils import epath

from electra_jax import workdir as workdir_io
from electra_jax.errors import UserInputError


def read_json(path: str) -> dict:
  """The JSON object in PATH; UserInputError (delete the seed's directory) if unreadable."""
  try:
    return json.loads(epath.Path(path).read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise UserInputError(f"cannot read {path} ({e}); delete that seed's directory to rerun "
                         f"it") from e


def write_json(path: str, data) -> None:
  workdir_io.write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def relative_path(path: str, start: str) -> str:
  """PATH relative to its ancestor START (local paths or URLs)."""
  return os.fspath(epath.Path(path).relative_to(epath.Path(start)))


def remove_tree(path: str) -> None:
  """Removes directory PATH and its contents, if it exists (local or on an object store)."""
  epath.Path(path).rmtree(missing_ok=True)


def _replace_dir(src: str, dest: str) -> None:
  """Copies directory `src` to `dest`: locally atomically (built beside it, then renamed);
  on an object store, which cannot rename a directory, file by file (each whole)."""
  if workdir_io.is_remote(dest):
    _replace_remote_dir(src, dest)
    return
  tmp = f"{dest}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.copytree(src, tmp)
  old = f"{dest}.old-{os.getpid()}"
  if os.path.exists(dest):
    os.replace(dest, old)
  os.replace(tmp, dest)
  shutil.rmtree(old, ignore_errors=True)


def _replace_remote_dir(src: str, dest: str) -> None:
  """Copies the files directly in `src` to `dest` and removes `dest`'s other files."""
  names = sorted(f.name for f in epath.Path(src).iterdir())
  for name in names:
    workdir_io.copy_atomic(epath.Path(src) / name, epath.Path(dest) / name)
  if epath.Path(dest).is_dir():
    for old in epath.Path(dest).iterdir():
      if old.name not in names:
        old.unlink()


def check_seed_settings(seed_dir: str, settings: dict, is_main: bool) -> None:
  """Records the settings a seed's run starts with; refuses to resume under others."""
  path = os.path.join(seed_dir, "settings.json")
  if epath.Path(path).exists():
    if read_json(path) != json.loads(json.dumps(settings)):
      raise UserInputError(
          f"{seed_dir} holds an unfinished run with different settings; use a new "
          f"--workdir (or delete {seed_dir})")
  elif is_main:
    # A seed dir without settings.json (an old layout) cannot be resumed safely.
    remove_tree(workdir_io.checkpoint_dir(seed_dir))
    write_json(path, settings)


def checkpoint_manager(seed_dir: str):
  """The orbax CheckpointManager of SEED_DIR/checkpoints (latest only, async saves)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp.CheckpointManager(
      workdir_io.checkpoint_dir(seed_dir),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=True),
      item_handlers={"state": ocp.StandardCheckpointHandler()})


def restore_state(manager, step: int, abstract_state, state_sharding, seed_dir: str):
  """The TrainState of checkpoint STEP, sharded as STATE_SHARDING; UserInputError if it
  does not fit this run."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  target = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                        abstract_state, state_sharding)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
  except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
    raise UserInputError(
        f"checkpoint {step} in {seed_dir}/checkpoints does not fit this run "
        f"({str(e).splitlines()[0][:200]}); delete {seed_dir} to start the seed over") from e
  return restored["state"]


def summarize(values: list[float]) -> dict[str, float]:
  """median, mean, std (sample, ddof=1; 0 for one seed), min, max and n of `values`."""
  arr = np.asarray(values, np.float64)
  return {"median": float(statistics.median(values)), "mean": float(arr.mean()),
          "std": float(arr.std(ddof=1)) if len(values) > 1 else 0.0,
          "min": float(arr.min()), "max": float(arr.max()), "n": len(values)}


def write_results(workdir, spec, seeds, per_seed, settings, counts, is_main) -> dict:
  """Summarises the seeds, copies the best seed's predictions, writes results.json."""
  main_split = spec.dev_splits[0]
  main_values = [per_seed[str(sd)][main_split][spec.main_metric] for sd in seeds]
  best_seed = seeds[int(np.argmax(main_values))]
  summary = {}
  for split in list(spec.dev_splits) + list(spec.test_splits):
    if all(split in per_seed[str(sd)] for sd in seeds):
      names = per_seed[str(seeds[0])][split].keys()
      summary[split] = {k: summarize([per_seed[str(sd)][split][k] for sd in seeds])
                        for k in names}
  best = per_seed[str(best_seed)]
  predictions = {"seed": best_seed, "files": []}
  if best.get("predictions") and is_main:
    src = os.path.join(workdir, f"seed_{best_seed}", "predictions")
    _replace_dir(src, os.path.join(workdir, "predictions"))
    predictions["files"] = list(best["predictions"])  # relative to the workdir too
  results = {
      "task": spec.name,
      "main_metric": f"{main_split}/{spec.main_metric}",
      "main": summarize(main_values),
      "seeds": seeds,
      "best_seed": best_seed,
      "summary": summary,
      "per_seed": {str(sd): {k: v for k, v in per_seed[str(sd)].items()
                             if k not in ("settings", "predictions")} for sd in seeds},
      "predictions": predictions,
      "examples": counts,
      "settings": settings,
  }
  if is_main:
    write_json(os.path.join(workdir, "results.json"), results)
  m = results["main"]
  print(f"{spec.name} {results['main_metric']} over {len(seeds)} seed(s): median "
        f"{m['median']:.4f} (min {m['min']:.4f}, max {m['max']:.4f}, std {m['std']:.4f}); "
        f"results in {os.path.join(workdir, 'results.json')}", flush=True)
  return results


