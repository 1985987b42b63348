"""How long the trainer waits for input: `perf/input_wait_frac` of real training runs.

    python benchmarks/input_wait.py [--corpus=../shared/corpus] [--steps=60]
        [--log_every=10] [--runs=small:32,tiny:32] [--workdir=/tmp/electra_input_wait]
        [--out=benchmarks/input_wait.md]

For each run NAME:BATCH, runs `python -m electra_jax.train --config=configs/NAME.py` as
a user does (fresh process, raw text of --corpus built and cached on first use, the
default input pipeline) for --steps steps at global batch BATCH, logging every
--log_every steps, and reads back the trainer's own `perf/input_wait_frac` (the share of
the training time between two logs that the loop spent blocked on the next batch) and
`perf/tokens_per_s` from metrics.jsonl.  The first log interval holds the pipeline's
start-up and is reported apart from the steady state (the later intervals).

The target (issue 5) is a wait below 2% of the training time.  The dataset is built
before the timed run (a first, one-step run), so building is not counted.
"""

import argparse
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

sys.path.insert(0, str(REPO))

from machine import cpu_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from electra_jax.config import pretrain_config  # pylint: disable=g-import-not-at-top,wrong-import-position


def _train(name: str, batch: int, steps: int, log_every: int, corpus: str,
           workdir: pathlib.Path, cache: pathlib.Path) -> list[dict]:
  shutil.rmtree(workdir, ignore_errors=True)
  cmd = [sys.executable, "-m", "electra_jax.train", f"--config=configs/{name}.py",
         f"--workdir={workdir}", f"--config.data.text={corpus}/*.txt",
         f"--config.data.cache_dir={cache}", f"--config.train.batch_size={batch}",
         f"--config.train.steps={steps}", f"--config.train.log_every={log_every}",
         f"--config.train.eval_every={10 * steps}", "--config.train.eval_batches=1",
         f"--config.train.checkpoint_every={10 * steps}", "--config.train.progress_bar=off"]
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in rows if "perf/input_wait_frac" in r]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "corpus"))
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--log_every", type=int, default=10)
  parser.add_argument("--runs", default="small:32,tiny:32")
  parser.add_argument("--workdir", default="/tmp/electra_input_wait")
  parser.add_argument("--out", default=str(REPO / "benchmarks" / "input_wait.md"))
  args = parser.parse_args()
  base = pathlib.Path(args.workdir)
  cache = base / "cache"
  lines = ["# Input wait of the trainer (`perf/input_wait_frac`)", "",
           f"Machine: {cpu_model()}; measured "
           f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}.",
           f"Command: `python benchmarks/input_wait.py --steps={args.steps} "
           f"--log_every={args.log_every} --runs={args.runs}`", "",
           "| config | batch x seq | tokens/s | input wait, first interval | "
           "input wait, steady state (mean / max of the later intervals) |",
           "| --- | --- | ---: | ---: | ---: |"]
  for run in args.runs.split(","):
    name, batch = run.split(":")
    # A one-step run first builds (and caches) the vocab and the examples.
    _train(name, int(batch), 1, 1, args.corpus, base / f"{name}_build", cache)
    rows = _train(name, int(batch), args.steps, args.log_every, args.corpus,
                  base / name, cache)
    first, rest = rows[0], rows[1:]
    waits = [r["perf/input_wait_frac"] for r in rest]
    tokens = sum(r["perf/tokens_per_s"] for r in rest) / max(len(rest), 1)
    seq = pretrain_config(name).data.max_seq_length
    lines.append(f"| {name} | {batch} x {seq} | {tokens:,.0f} | "
                 f"{first['perf/input_wait_frac']:.2%} | "
                 f"{sum(waits) / max(len(waits), 1):.2%} / {max(waits, default=0):.2%} |")
    print(lines[-1], flush=True)
  lines += ["", "Target: below 2% of the training time."]
  pathlib.Path(args.out).write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
