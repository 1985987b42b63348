"""Fine-tuning config: the paper's GLUE recipe (DESIGN.md §3), one knob per line.

Use:
  python -m electra_jax.finetune --config=configs/finetune.py --workdir=DIR \
      --config.task=sst2 --config.data_dir=glue_data/SST-2 --config.init=PRETRAIN_WORKDIR

Values of 0 (or -1) below mean "the default for this task / model size", resolved
by `electra_jax.finetune.resolve_settings`, printed at the start of a run and saved
in results.json.  A model whose shape matches no size preset gets the 'base'
defaults.
"""

import ml_collections


def get_config():
  """Returns the fine-tuning ConfigDict (locked by --config)."""
  c = ml_collections.ConfigDict()
  c.task = ""  # GLUE task (cola sst2 mrpc stsb qqp mnli qnli rte wnli), or a name for a TSV task
  c.data_dir = ""  # dir of train.tsv, dev*.tsv, test*.tsv; 'tfds' = GLUE from tfds (needs TF)
  c.init = ""  # pretraining workdir (latest checkpoint); '' = random init (set vocab, model_size)
  c.vocab = ""  # vocab file for random init; with init, optional (must then match the init's vocab)
  c.model_size = "small"  # encoder size for random init: tiny, small, base, large
  c.max_seq_length = 128  # tokens per example ([CLS] A [SEP] B [SEP], truncated/padded)

  c.learning_rate = 0.0  # peak lr; 0 = per size: 1e-3 tiny, 3e-4 small, 1e-4 base, 5e-5 large
  c.batch_size = 32  # GLOBAL training batch size (all devices)
  c.epochs = 0.0  # training epochs; 0 = task default: 10 for rte and stsb, else 3
  c.warmup_fraction = 0.1  # share of the training steps with a linear lr warmup
  c.layerwise_lr_decay = -1.0  # layer-wise lr decay; -1 = 0.9 large, else 0.8; 0 or 1 = off
  c.layerwise_decay_compat = False  # True = the original code's off-by-one (top layer gets decay^2)
  c.weight_decay = 0.01  # decoupled weight decay, not on LayerNorm params or biases
  c.clip_norm = 1.0  # global gradient-norm clip (0 disables)
  c.dropout = 0.1  # hidden dropout in the encoder and before the classifier
  c.attention_dropout = 0.1  # attention-probability dropout in the encoder
  c.dtype = "float32"  # compute dtype: 'float32' or 'bfloat16' (params stay float32)

  c.seeds = "1"  # comma-separated seeds, one full run each; results report median and spread
  c.eval_batch_size = 128  # GLOBAL evaluation batch size (last batch padded, never dropped)
  c.log_every = 100  # training steps between loss logs
  c.checkpoint_every = 1000  # training steps between checkpoints of each seed's run; 0 = none mid-run
  c.keep_final_checkpoint = True  # keep each seed's final checkpoint (the fine-tuned weights)
  c.write_test_predictions = True  # predict the test split(s) for each seed when the files exist

  # Columns of a generic (non-GLUE) TSV task; '' = infer from train.tsv's header.
  c.tsv = ml_collections.ConfigDict()
  c.tsv.text_a = ""  # first-text column: header name, or 0-based position for headerless files
  c.tsv.text_b = ""  # second-text column for sentence-pair tasks; '' = single sentence
  c.tsv.label = ""  # label column; '' = 'label'
  c.tsv.regression = False  # real-valued labels (MSE loss, Spearman/Pearson)
  c.tsv.has_header = True  # False = files without a header row (give columns as positions)
  return c
