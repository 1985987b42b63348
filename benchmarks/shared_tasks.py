"""Dev scores on ../shared/tasks: a briefly pretrained tiny model vs the same model
from random init (the comparison issue 3 asks for).

    python benchmarks/shared_tasks.py --workdir=/tmp/shared_tasks [--steps=1500]

Pretrains configs/tiny.py on ../shared/corpus (vocab 2000, 64-token sequences), then
fine-tunes each task in ../shared/tasks twice with configs/finetune.py -- from the
pretraining workdir and from random init with the same vocab -- and prints one table
of dev metrics (median over --seeds).  Everything lands under --workdir; rerunning
reuses the finished pretraining and fine-tuning runs.
"""

import argparse
import importlib.util
import json
import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _config_module(name):
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--steps", type=int, default=1500, help="pretraining steps")
  parser.add_argument("--temperature", type=float, default=1.0,
                      help="generator sampling temperature during pretraining")
  parser.add_argument("--generator_size", type=float, default=0.5)
  parser.add_argument("--seeds", default="1,2,3")
  parser.add_argument("--max_seq_length", type=int, default=64)
  parser.add_argument("--tasks", default="austen_book,sotu_party,verse_para")
  args = parser.parse_args()
  if not (SHARED / "corpus").is_dir() or not (SHARED / "tasks").is_dir():
    sys.exit(f"error: {SHARED}/corpus and {SHARED}/tasks are needed beside the checkout")

  from electra_jax import finetune, train  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(args.workdir)
  pre = _config_module("tiny").get_config()
  pre.data.text = str(SHARED / "corpus" / "*.txt")
  pre.data.cache_dir = str(workdir / "cache")
  pre.data.vocab_size = 2000
  pre.data.max_seq_length = 64
  pre.train.steps = args.steps
  pre.train.eval_every = args.steps
  pre.train.checkpoint_every = args.steps
  pre.train.log_every = max(1, args.steps // 10)
  pre.train.progress_bar = "off"
  pre.pretrain.temperature = args.temperature
  pre.model.generator_size = args.generator_size
  pre_dir = str(workdir / "pretrain")
  pre_metrics = train.train_and_evaluate(pre, pre_dir)
  vocab = os.path.join(pre_dir, "vocab", os.listdir(os.path.join(pre_dir, "vocab"))[0])

  rows = []
  for task in args.tasks.split(","):
    for init in ("pretrained", "random"):
      c = _config_module("finetune").get_config()
      c.task = task
      c.data_dir = str(SHARED / "tasks" / task)
      c.max_seq_length = args.max_seq_length
      c.seeds = args.seeds
      c.log_every = 1000
      if init == "pretrained":
        c.init = pre_dir
      else:
        c.vocab, c.model_size = vocab, "tiny"
      results = finetune.finetune_and_evaluate(c, str(workdir / f"{task}-{init}"))
      rows.append((task, init, results["main_metric"], results["main"]))

  print("\npretraining held-out:", json.dumps({k: round(v, 4) for k, v in pre_metrics.items()
                                               if "auc" in k or "accuracy" in k}))
  print(f"{'task':<12} {'init':<11} {'metric':<16} {'median':>7} {'min':>7} {'max':>7}")
  for task, init, metric, m in rows:
    print(f"{task:<12} {init:<11} {metric:<16} {m['median']:7.4f} {m['min']:7.4f} "
          f"{m['max']:7.4f}")


if __name__ == "__main__":
  main()
