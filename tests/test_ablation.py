"""The objective-ablation study: equal budgets, reports, reuse, failure isolation, CLI."""

import copy
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from electra_jax import flops
from electra_jax.errors import UserInputError
from electra_jax.experiments import ablation

REPO = pathlib.Path(__file__).resolve().parents[1]
OBJECTIVES = ("electra", "mlm")


def _ablation_config(preset="cpu"):
  spec = importlib.util.spec_from_file_location("ablation_config",
                                                REPO / "configs" / "ablation.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def _toy_task(root: pathlib.Path) -> str:
  """A two-class TSV task, 32 train / 16 dev rows, in root/toy."""
  task = root / "toy"
  task.mkdir(parents=True)
  words = {0: "the lady walked in the garden and spoke of love",
           1: "the whale rose from the sea and the ship was lost"}
  for split, n in (("train", 32), ("dev", 16)):
    rows = ["sentence\tlabel"] + [f"{words[i % 2]} {i}\t{i % 2}" for i in range(n)]
    (task / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
  return str(root)


def _study_config(tiny_config, corpus_glob, cache_dir, task_dir):
  c = _ablation_config("cpu")
  c.objectives = ",".join(OBJECTIVES)
  c.tasks = "toy"
  c.task_dir = task_dir
  # configs/tiny.py's model as conftest sets it up; 8 'electra' steps compile the same
  # program as tests/test_train.py's resume test, which then reuses it from the cache.
  c.budget_electra_steps = 8
  c.pretrain = tiny_config(corpus_glob, cache_dir, log_every=4, eval_every=1000,
                           checkpoint_every=1000, eval_batches=1)
  f = c.finetune
  f.seeds, f.epochs, f.batch_size, f.eval_batch_size = "1", 1.0, 8, 16
  f.max_seq_length, f.log_every, f.write_test_predictions = 16, 100, False
  return c


@pytest.fixture(scope="module")
def study(tiny_config, corpus_glob, cache_dir, tmp_path_factory):
  """One finished two-objective study: (config, workdir, results)."""
  root = tmp_path_factory.mktemp("ablation")
  config = _study_config(tiny_config, corpus_glob, cache_dir, _toy_task(root / "tasks"))
  workdir = str(root / "study")
  return config, workdir, ablation.run_study(config, workdir)


def test_equal_budget_and_reports(study):
  config, workdir, results = study
  assert results["complete"] and results["failed"] == []
  assert list(results["objectives"]) == list(OBJECTIVES)
  vocab = results["vocab_size"]
  electra_step = flops.train_flops_per_step(
      ablation.objective_config(config, "electra", 1), vocab)["total"]
  budget = results["budget_flops"]
  assert budget == 8 * electra_step
  for name, e in results["objectives"].items():
    per_step = flops.train_flops_per_step(ablation.objective_config(config, name, 1),
                                          vocab)["total"]
    assert e["flops_per_step"] == per_step
    # Within one step of the budget, never over it.
    assert e["steps"] * per_step <= budget < (e["steps"] + 1) * per_step
    assert e["pretrain_flops"] == e["steps"] * per_step
    # The pretraining really ran that many steps of that objective.
    pre = os.path.join(workdir, "pretrain", name)
    saved = json.load(open(os.path.join(pre, "config.json"), encoding="utf-8"))
    assert (saved["objective"], saved["train"]["steps"]) == (name, e["steps"])
    assert str(e["steps"]) in os.listdir(os.path.join(pre, "checkpoints"))
    run = e["tasks"]["toy"]
    assert run["status"] == "done" and run["main_metric"] == "dev/accuracy"
    assert 0.0 <= run["median"] <= 1.0 and list(run["per_seed"]) == ["1"]
    assert e["average"]["mean_of_medians"] == pytest.approx(run["median"])
  electra, mlm = results["objectives"]["electra"], results["objectives"]["mlm"]
  assert electra["steps"] == 8
  # No generator: cheaper steps, so at least as many.
  assert mlm["flops_per_step"] < electra["flops_per_step"] and mlm["steps"] >= 8
  # Held-out metrics that apply to each objective.
  assert "disc_auc" in results["objectives"]["electra"]["pretrain_eval"]
  assert "model_mlm_accuracy" in results["objectives"]["mlm"]["pretrain_eval"]
  assert "disc_auc" not in results["objectives"]["mlm"]["pretrain_eval"]

  on_disk = json.load(open(os.path.join(workdir, "results.json"), encoding="utf-8"))
  assert on_disk["objectives"]["mlm"]["steps"] == results["objectives"]["mlm"]["steps"]
  md = open(os.path.join(workdir, "results.md"), encoding="utf-8").read()
  rows = [line for line in md.splitlines() if line.startswith("| `")]
  assert len(rows) == 2 * len(OBJECTIVES)  # main table + FLOPs table
  for name, e in results["objectives"].items():
    row = next(r for r in rows if r.startswith(f"| `{name}` | done | {e['steps']} |"))
    assert f"{100 * e['tasks']['toy']['median']:.1f}" in row
  assert "toy (dev/accuracy)" in md and "RTD AUC" in md and "main MLM acc" in md
  with open(os.path.join(workdir, "ablation.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_rerun_reuses_everything(study, monkeypatch, capsys):
  config, workdir, first = study
  from electra_jax import train  # pylint: disable=g-import-not-at-top

  def no_training(*args, **kwargs):
    raise AssertionError("pretraining ran again")

  monkeypatch.setattr(train, "train_and_evaluate", no_training)
  watched = [os.path.join(workdir, "pretrain", o, ablation.PRETRAIN_DONE_FILE)
             for o in OBJECTIVES]
  watched += [os.path.join(workdir, "finetune", o, "toy", "seed_1", "metrics.json")
              for o in OBJECTIVES]
  before = {p: os.stat(p).st_mtime_ns for p in watched}
  again = ablation.run_study(config, workdir)
  assert again["failed"] == []
  assert {p: os.stat(p).st_mtime_ns for p in watched} == before
  for name in OBJECTIVES:
    assert again["objectives"][name]["tasks"]["toy"]["per_seed"] == (
        first["objectives"][name]["tasks"]["toy"]["per_seed"])
  out = capsys.readouterr().out
  assert out.count("reusing the finished pretraining") == len(OBJECTIVES)
  assert "seed 1: reusing the finished run" in out

  # A different budget no longer matches the finished runs: refused, recorded.
  changed = copy.deepcopy(config)
  changed.budget_electra_steps = 10
  refused = ablation.run_study(changed, workdir)
  assert refused["failed"] == list(OBJECTIVES)
  assert "use a new --workdir" in refused["objectives"]["electra"]["errors"][0]


def test_one_failing_objective_keeps_the_others(study, monkeypatch, capsys):
  """Runs last on the shared study (it removes mlm's finished work)."""
  config, workdir, _ = study
  shutil.rmtree(os.path.join(workdir, "finetune", "mlm"))
  os.remove(os.path.join(workdir, "pretrain", "mlm", ablation.PRETRAIN_DONE_FILE))
  from electra_jax import train  # pylint: disable=g-import-not-at-top

  def fail(cfg, _):
    raise RuntimeError(f"boom in {cfg.objective}")

  monkeypatch.setattr(train, "train_and_evaluate", fail)
  with pytest.raises(SystemExit) as exit_info:
    ablation.main(config, workdir)
  assert exit_info.value.code == 1
  assert "1 of 2 objective(s) failed (mlm)" in capsys.readouterr().err
  results = json.load(open(os.path.join(workdir, "results.json"), encoding="utf-8"))
  assert results["complete"] and results["failed"] == ["mlm"]
  assert results["objectives"]["electra"]["status"] == "done"
  assert results["objectives"]["electra"]["average"] is not None
  mlm = results["objectives"]["mlm"]
  assert mlm["status"] == "failed" and mlm["average"] is None
  assert mlm["errors"] == ["pretraining: RuntimeError: boom in mlm"]
  md = open(os.path.join(workdir, "results.md"), encoding="utf-8").read()
  assert "| `mlm` | failed |" in md and "boom in mlm" in md


def test_bad_configuration_fails_before_any_work(tiny_config, corpus_glob, cache_dir,
                                                 tmp_path):
  tasks = _toy_task(tmp_path / "tasks")
  c = _study_config(tiny_config, corpus_glob, cache_dir, tasks)
  checks = [
      ("objectives", "electra,bert", "unknown objective"),
      ("objectives", "mlm,mlm", "lists an entry twice"),
      ("task_dir", "", "set --config.task_dir"),
      ("tasks", "toy,sst2", "no directory for task 'sst2'.*SST-2"),
      ("budget_flops", 1.0, "less than one 'electra' step"),
  ]
  for key, value, message in checks:
    bad = copy.deepcopy(c)
    bad[key] = value
    with pytest.raises(UserInputError, match=message):
      ablation.run_study(bad, str(tmp_path / "never"))
  bad = copy.deepcopy(c)
  bad.pretrain.data.text = ""
  with pytest.raises(UserInputError, match="needs pretraining data"):
    ablation.run_study(bad, str(tmp_path / "never"))
  assert not os.path.exists(tmp_path / "never" / "pretrain")


def test_presets_and_task_dirs(tmp_path):
  cpu, base = _ablation_config("cpu"), _ablation_config("base")
  assert ablation.parse_objectives(cpu.objectives) == list(flops.OBJECTIVES)
  assert cpu.pretrain.data.text == "" and cpu.task_dir == ""  # set on the command line
  assert (cpu.pretrain.model.size, cpu.pretrain.data.max_seq_length) == ("tiny", 64)
  assert cpu.pretrain.data.vocab_size == 2000 and cpu.finetune.seeds == "1,2"
  assert cpu.tasks == "austen_book,sotu_party,verse_para"
  assert base.pretrain.model.size == "base" and base.pretrain.train.batch_size == 256
  budget, stated = ablation.resolve_budget(base, 30522)
  assert stated == "the FLOPs of 766000 'electra' steps"
  assert budget == pytest.approx(6.7e19, rel=0.02)
  assert ablation.steps_for_budget(budget, budget // 3) == 3
  with pytest.raises(ValueError, match="unknown ablation preset"):
    _ablation_config("huge")
  (tmp_path / "SST-2").mkdir()
  (tmp_path / "mine").mkdir()
  assert ablation.task_data_dir(str(tmp_path), "sst2") == str(tmp_path / "SST-2")
  assert ablation.task_data_dir(str(tmp_path), "mine") == str(tmp_path / "mine")
  assert ablation.task_data_dir("tfds", "sst2") == "tfds"


def test_cli_reports_bad_input_with_status_2(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "electra_jax.experiments.ablation",
       "--config=configs/ablation.py:cpu", f"--workdir={tmp_path / 'w'}",
       "--config.task_dir=" + str(tmp_path)],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "error: the study needs pretraining data" in proc.stderr
