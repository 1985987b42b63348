"""The paper's objective ablation (Table 5) at equal pretraining compute.

Presets (big_vision style, `--config=configs/ablation.py:<preset>`, default `cpu`):

  cpu   tiny models (2 layers, 64 wide, half-width generator sampling at temperature
        2, lr 1.5e-3 with 200 warmup steps: the recipe README's "What to expect from
        configs/tiny.py" explains), 64-token sequences,
        a 2000-piece vocab trained on the data, all five objectives, each given the
        FLOPs of 800 'electra' steps (batch 32), then one epoch of fine-tuning per
        task with 2 seeds.  About an hour on a 2-core CPU (~7 min of pretraining per
        objective, ~4 min of fine-tuning) with the corpus and the three tasks beside
        this repository (paths are NOT defaulted; set them on the command line):

          python -m electra_jax.experiments.ablation --config=configs/ablation.py:cpu \\
              --workdir=runs/ablation_cpu \\
              --config.pretrain.data.text='../shared/corpus/*.txt' \\
              --config.task_dir=../shared/tasks

  base  ELECTRA-Base (12 layers, 768 wide, 1/3-width generator, batch 256 x 512
        tokens, the paper's optimizer), each objective given the FLOPs of 766k
        ELECTRA-Base steps -- the paper's ELECTRA-Base run, which was matched to
        BERT-Base's compute (the paper lists 6.4e19 FLOPs for both; this count gives
        6.7e19, see electra_jax/flops.py) -- then the eight GLUE tasks with 5 seeds.
        For TPU/GPU hosts; shrink with --config.budget_electra_steps for a cheaper run:

          python -m electra_jax.experiments.ablation --config=configs/ablation.py:base \\
              --workdir=runs/ablation_base \\
              --config.pretrain.data.text='corpus/*.txt' \\
              --config.task_dir=glue_data

`task_dir` holds one directory per task, named as in `tasks` (GLUE's download names
such as SST-2 or STS-B also match), or is 'tfds' for GLUE from tensorflow-datasets.
`pretrain` is a full pretraining config (electra_jax/config.py documents every key)
and `finetune` a full fine-tuning config (configs/finetune.py); the study sets
pretrain.objective, pretrain.train.steps, finetune.task, finetune.data_dir and
finetune.init itself.  Any key is an override: --config.pretrain.model.generator_size=0.25.
"""

import importlib.util
import os

import ml_collections

from electra_jax.config import pretrain_config

PRESETS = ("cpu", "base")


def _finetune_config() -> ml_collections.ConfigDict:
  """configs/finetune.py's get_config(), loaded by path (configs/ is not a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune.py")
  spec = importlib.util.spec_from_file_location("_ablation_finetune_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  """The study's config for `preset` in PRESETS (locked by --config)."""
  preset = preset or "cpu"
  if preset not in PRESETS:
    raise ValueError(f"unknown ablation preset {preset!r}; choose one of {PRESETS}")
  c = ml_collections.ConfigDict()
  c.preset = preset  # which preset these values came from (informational)
  c.objectives = "electra,electra_15,replace_mlm,all_tokens_mlm,mlm"  # compared, in table order
  c.budget_flops = 0.0  # pretraining FLOPs per objective; 0 = the FLOPs of budget_electra_steps
  c.budget_electra_steps = 0  # budget as this many steps of objective 'electra' (same config)
  c.tasks = ""  # comma-separated fine-tuning tasks (directory names under task_dir, or GLUE names)
  c.task_dir = ""  # directory with one sub-directory per task, or 'tfds' (GLUE); must be set

  if preset == "cpu":
    c.budget_electra_steps = 800  # ~6 min of tiny 'electra' pretraining on 2 cores
    c.tasks = "austen_book,sotu_party,verse_para"  # the tasks of ../shared/tasks
    p = pretrain_config("tiny")  # 2 layers, hidden 64, embedding 32
    p.model.generator_size = 0.5  # half width (paper's upper end); 1/4 is too weak this small
    p.data.vocab_size = 2000  # SentencePiece vocab trained on the data
    p.data.max_seq_length = 64  # tokens per pretraining example
    p.data.validation_fraction = 0.02  # held-out documents for the pretraining metrics
    p.train.batch_size = 32  # sequences per step
    p.optim.learning_rate = 1.5e-3  # the tiny recipe measured in tests/conftest.py
    p.optim.warmup_steps = 200  # shorter warmups collapsed the tiny encoder (README)
    p.pretrain.temperature = 2.0  # at T=1 a tiny discriminator stays at chance this briefly (README)
    p.train.log_every = 100  # steps between training logs
    p.train.eval_every = 1_000_000  # held-out evaluation only at the end
    p.train.eval_batches = 8  # batches of 32 held-out sequences per evaluation
    p.train.checkpoint_every = 500  # resumable every 500 steps
    p.train.progress_bar = "off"  # log lines instead of a progress bar
  else:
    c.budget_electra_steps = 766_000  # ELECTRA-Base's run (= BERT-Base's compute in the paper)
    c.tasks = "cola,sst2,mrpc,stsb,qqp,mnli,qnli,rte"  # GLUE dev tasks of the paper's Table 5
    p = pretrain_config("base")  # paper base: 12 x 768, generator 1/3, batch 256, seq 512
    p.train.eval_every = 100_000  # held-out evaluations during the long runs
  c.pretrain = p  # shared pretraining config (objective and train.steps are set per objective)

  f = _finetune_config()
  if preset == "cpu":
    f.max_seq_length = 64  # fine-tuning tokens per example (the pretraining length)
    f.seeds = "1,2"  # fine-tuning runs per task; the table reports median and range
    f.epochs = 1.0  # one pass over each task's training set (the paper: 3), to fit the hour
    f.log_every = 1000  # steps between fine-tuning loss logs
    f.write_test_predictions = False  # dev scores are all the study needs
  else:
    f.max_seq_length = 128  # the paper's GLUE length
    f.seeds = "1,2,3,4,5"  # fine-tuning runs per task; the table reports median and range
  c.finetune = f  # shared fine-tuning config (task, data_dir and init are set per run)
  return c
