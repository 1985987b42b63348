"""launch/colab_tpu.ipynb, executed end to end on CPU with tiny parameters.

The notebook runs in a fresh `python3` kernel (ipykernel's built-in kernelspec, started
with this interpreter) through nbclient, with a papermill-style cell of parameters
inserted after its `parameters` cell.  The checks are on what the run leaves behind:
checkpoints and falling pretraining loss, the curves PNG, fine-tuning results with a dev
metric, and a Hugging Face export (loaded back with transformers when it is installed).
"""

import datetime
import importlib.util
import json
import os
import pathlib

import jax
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
kernelspec = pytest.importorskip("jupyter_client.kernelspec")  # nbclient's dependencies
kernel_manager = pytest.importorskip("jupyter_client.manager")

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "launch" / "colab_tpu.ipynb"
STEPS = 30


def read_notebook():
  return nbformat.read(NOTEBOOK, as_version=4)


def parameters_index(nb):
  tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  return tagged[0]


def cell_with(nb, text):
  """The one code cell whose source contains `text`."""
  found = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
  assert len(found) == 1, f"{len(found)} code cells contain {text!r}"
  return found[0]


def stdout_of(cell):
  return "".join(o.text for o in cell.outputs
                 if o.output_type == "stream" and o.name == "stdout")


def print_cell_seconds(nb):
  """Seconds each code cell ran (nbclient records the timing): shown with pytest -s."""
  for cell in nb.cells:
    timing = cell.metadata.get("execution", {})
    if "shell.execute_reply" in timing:
      start, end = (datetime.datetime.fromisoformat(timing[k].replace("Z", "+00:00"))
                    for k in ("iopub.execute_input", "shell.execute_reply"))
      print(f"{(end - start).total_seconds():6.1f}s  {cell.source.splitlines()[0][:60]}")


def test_notebook_is_valid_and_clean():
  nb = read_notebook()
  nbformat.validate(nb)
  assert nb.metadata["kernelspec"]["name"] == "python3"
  for cell in nb.cells:
    if cell.cell_type == "code":  # committed without outputs
      assert cell.outputs == [] and cell.execution_count is None
  params = nb.cells[parameters_index(nb)].source
  for name in ("SIZE", "STEPS", "BATCH", "SEQ", "VOCAB_SIZE", "WORKDIR", "TEXT_GLOB", "QUICK"):
    assert f"\n{name} = " in "\n" + params
  # One clearly marked install source, before the parameters.
  install = cell_with(nb, "REPO_URL = ")
  assert nb.cells.index(install) < parameters_index(nb)
  assert 'REPO_URL = "https://github.com/YOUR_ORG/electra_jax"' in install.source


def test_notebook_runs_end_to_end_on_cpu(tmp_path):
  nb = read_notebook()
  workdir = tmp_path / "run"
  injected = nbformat.v4.new_code_cell(
      f'SIZE = "tiny"\nSTEPS = {STEPS}\nBATCH = 32\nSEQ = 64\nVOCAB_SIZE = 1000\n'
      f'WORKDIR = {str(workdir)!r}\nTEXT_GLOB = ""\nQUICK = True\n',
      metadata={"tags": ["injected-parameters"]})
  nb.cells.insert(parameters_index(nb) + 1, injected)

  env = dict(os.environ, JAX_PLATFORMS="cpu", ELECTRA_JAX_CACHE=str(tmp_path / "cache"),
             # conftest.py's persistent XLA cache, shared with the kernel
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop("XLA_FLAGS", None)  # one CPU device, whatever the calling shell simulates
  # ipykernel's built-in 'python3' kernelspec runs this interpreter (sys.executable); an
  # empty kernel search path keeps a python3 kernelspec installed elsewhere (e.g. ~/.local,
  # another interpreter) out of the way, and nothing needs registering.
  # The connection file goes under tmp_path: by default it is a /tmp/tmp*.json that
  # outlives the kernel.
  km = kernel_manager.AsyncKernelManager(
      kernel_name="python3", kernel_spec_manager=kernelspec.KernelSpecManager(kernel_dirs=[]),
      connection_file=str(tmp_path / "kernel.json"))
  client = nbclient.NotebookClient(nb, km=km, timeout=600,
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute(env=env)
  print_cell_seconds(nb)

  assert "already installed: nothing to install" in stdout_of(cell_with(nb, "REPO_URL = "))

  # Pretraining: the final checkpoint, and a training loss that fell.
  assert str(STEPS) in os.listdir(workdir / "checkpoints")
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
  assert losses[-1][0] == STEPS and len(losses) >= 5
  print("train/loss", losses)
  assert losses[-1][1] < losses[0][1]
  assert max(r["step"] for r in rows if "eval/disc_auc" in r) == STEPS
  # Live curves: the PNG, and one image left displayed by the training cell.
  assert (workdir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  train_cell = cell_with(nb, "train_and_evaluate(config, WORKDIR)")
  assert [o for o in train_cell.outputs if "image/png" in o.get("data", {})]
  assert f"step {STEPS}/{STEPS}" in stdout_of(train_cell)

  # Fine-tuning: results.json with a dev accuracy.
  results = json.loads((tmp_path / "run-finetune" / "results.json").read_text())
  assert results["task"] == "which_source" and results["main_metric"] == "dev/accuracy"
  assert 0.0 <= results["per_seed"]["1"]["dev"]["accuracy"] <= 1.0
  assert results["examples"] == {"train": 800, "dev": 200}
  train_rows = (tmp_path / "run-task" / "train.tsv").read_text().splitlines()
  assert train_rows[0] == "sentence\tlabel" and len(train_rows) == 801
  assert {row.split("\t")[1] for row in train_rows[1:]} == {"reference", "docstring"}

  # Hugging Face export, and the discriminator loaded back with transformers.
  for role in ("discriminator", "generator"):
    files = os.listdir(tmp_path / "run-hf" / role)
    assert "config.json" in files and "model.safetensors" in files
  config = json.loads((tmp_path / "run-hf" / "discriminator" / "config.json").read_text())
  assert config["architectures"] == ["ElectraForPreTraining"]
  out = stdout_of(cell_with(nb, "hf.export(WORKDIR, HF_DIR)"))
  if all(importlib.util.find_spec(m) for m in ("transformers", "torch")):
    # Loaded with no missing or unexpected weights (else the cell raises), one line of
    # per-token probabilities for each of the two sentences.
    assert "probability that each token was replaced" in out
    assert len([line for line in out.splitlines() if line.startswith("  [CLS]:")]) == 2
  else:
    assert "install the hf extra" in out
