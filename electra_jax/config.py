"""Default pretraining configs: the paper's hyperparameters, one knob per line.

`configs/*.py` are thin files that call `pretrain_config(size)` and adjust it, so
that every default lives here once.  Values follow Clark et al. (2020) and the
original TF1 code (see DESIGN.md §1).  `config_flags` locks the returned
ConfigDict, so a mistyped `--config.x.y=` override fails instead of being ignored.
"""

import ml_collections

# Per size: encoder shape, generator fraction, and training recipe (paper Table 6/7).
_SIZES = {
    # A toy model for tests and quick CPU demos (not in the paper).
    "tiny": dict(hidden_size=64, embedding_size=32, num_layers=2, num_heads=2,
                 intermediate_size=256, generator_size=0.25, learning_rate=1e-3,
                 batch_size=32, max_seq_length=128, steps=2000, warmup_steps=200,
                 mask_prob=0.15),
    "small": dict(hidden_size=256, embedding_size=128, num_layers=12, num_heads=4,
                  intermediate_size=1024, generator_size=0.25, learning_rate=5e-4,
                  batch_size=128, max_seq_length=128, steps=1_000_000,
                  warmup_steps=10_000, mask_prob=0.15),
    "base": dict(hidden_size=768, embedding_size=768, num_layers=12, num_heads=12,
                 intermediate_size=3072, generator_size=1 / 3, learning_rate=2e-4,
                 batch_size=256, max_seq_length=512, steps=766_000,
                 warmup_steps=10_000, mask_prob=0.15),
    "large": dict(hidden_size=1024, embedding_size=1024, num_layers=24, num_heads=16,
                  intermediate_size=4096, generator_size=0.25, learning_rate=2e-4,
                  batch_size=2048, max_seq_length=512, steps=400_000,
                  warmup_steps=10_000, mask_prob=0.25),
}

SIZES = tuple(_SIZES)


def pretrain_config(size: str = "small") -> ml_collections.ConfigDict:
  """Returns the pretraining config for `size` in {tiny, small, base, large}."""
  if size not in _SIZES:
    raise ValueError(f"unknown model size {size!r}; choose one of {SIZES}")
  s = _SIZES[size]
  c = ml_collections.ConfigDict()
  # 'electra'; paper ablations: 'electra_15' (disc loss on masked slots only), 'replace_mlm',
  # 'all_tokens_mlm', 'mlm' (BERT, no generator); see electra_jax/objective.py
  c.objective = "electra"
  c.seed = 0  # seed for parameter init, masking and sampling
  c.distributed = "auto"  # jax.distributed.initialize(): 'auto' (multi-host envs), 'on', 'off'

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # data-parallel axis size; -1 = the devices left over by fsdp
  c.mesh.fsdp = 1  # devices that shard params and optimizer state (electra_jax/parallel.py)
  c.mesh.cpu_devices = 0  # CPU hosts: run the cores as this many data-parallel devices (0 = one per core)

  c.model = m = ml_collections.ConfigDict()
  m.size = size  # name of the size preset these values came from (informational)
  m.hidden_size = s["hidden_size"]  # discriminator width
  m.embedding_size = s["embedding_size"]  # shared embedding width (projected when != hidden)
  m.num_layers = s["num_layers"]  # layers in both generator and discriminator
  m.num_heads = s["num_heads"]  # discriminator attention heads
  m.intermediate_size = s["intermediate_size"]  # discriminator feed-forward width
  m.generator_size = s["generator_size"]  # generator width as a fraction of the discriminator's
  m.embedding_sharing = "tied"  # 'tied' (paper), 'untied', 'gdes' (disc: stop_grad(shared)+delta)
  m.max_position_embeddings = 512  # learned position table size
  m.type_vocab_size = 2  # segment (token type) table size
  m.dropout_rate = 0.1  # hidden dropout
  m.attention_dropout_rate = 0.1  # attention-probability dropout
  m.initializer_range = 0.02  # truncated-normal init stddev
  m.layer_norm_eps = 1e-12  # LayerNorm epsilon
  m.dtype = "float32"  # compute dtype: 'float32' or 'bfloat16' (params stay float32)
  m.scan_layers = True  # nn.scan over layers: faster compile, same math
  m.remat = "dots"  # per-layer remat: 'dots' (keep matmul outputs; same math, 2.4x less activation memory), 'none', 'full'

  c.pretrain = p = ml_collections.ConfigDict()
  p.mask_prob = s["mask_prob"]  # fraction of non-pad tokens masked per sequence
  p.max_predictions_per_seq = 0  # masked slots per sequence; 0 = int((mask_prob + 0.005) * seq_len)
  p.mask_token_prob = 0.85  # share of masked slots shown as [MASK]; the rest keep the original
  p.temperature = 1.0  # generator sampling temperature
  p.disallow_correct = False  # forbid sampling the original token (paper ablation)
  p.gen_weight = 1.0  # weight of the generator's MLM loss
  p.disc_weight = 50.0  # weight of the discriminator's replaced-token loss
  p.mlm_mask_token_prob = 0.8  # objective 'mlm' (BERT): share of masked slots shown as [MASK]
  p.mlm_random_token_prob = 0.1  # objective 'mlm': share shown as a random non-special token

  c.optim = o = ml_collections.ConfigDict()
  o.learning_rate = s["learning_rate"]  # peak learning rate
  o.warmup_steps = s["warmup_steps"]  # linear warmup, multiplied into the decay
  o.end_learning_rate = 0.0  # learning rate reached at the last step
  o.decay_power = 1.0  # polynomial decay power (1 = linear)
  o.weight_decay = 0.01  # decoupled weight decay, not on LayerNorm or biases
  o.b1 = 0.9  # Adam beta1
  o.b2 = 0.999  # Adam beta2
  o.eps = 1e-6  # Adam epsilon
  o.clip_norm = 1.0  # global gradient-norm clip (0 disables)

  c.train = t = ml_collections.ConfigDict()
  t.steps = s["steps"]  # total optimizer steps
  t.batch_size = s["batch_size"]  # GLOBAL batch size (sequences per step, all devices)
  t.grad_accum_steps = 1  # micro-batches per step (gradients averaged inside the jitted step)
  t.log_every = 100  # steps between metric logs
  t.eval_every = 5000  # steps between held-out evaluations (and at the end)
  t.eval_batches = 20  # batches per evaluation
  t.checkpoint_every = 5000  # steps between checkpoints (and at the end)
  t.stop_at = 0  # stop (after a checkpoint) at this step to resume later; 0 = run all steps
  t.keep_checkpoints = 3  # newest checkpoints kept
  t.progress_bar = "auto"  # 'auto' (when stdout is a terminal), 'on', 'off'

  c.data = d = ml_collections.ConfigDict()
  d.text = ""  # comma-separated globs of raw text (built and cached on first use)
  d.dataset_dir = ""  # a dataset built by `python -m electra_jax.data.build`
  d.tfds = ""  # a tensorflow-datasets text dataset name (built and cached on first use)
  d.tfds_text_key = "text"  # the text field of that tfds dataset
  d.vocab = ""  # vocab for text/tfds data (.model or vocab.txt); '' = train one on the data
  d.vocab_size = 30522  # size of a vocab trained on the data
  d.max_seq_length = s["max_seq_length"]  # tokens per example
  d.validation_fraction = 0.01  # share of documents held out for evaluation
  d.seed = 0  # seed of the example builder and of the shuffle
  d.num_workers = 0  # example-builder worker processes; 0 = one per CPU
  d.cache_dir = ""  # cache of built data; '' = $ELECTRA_JAX_CACHE or ~/.cache/electra_jax
  d.prefetch = 2  # batches prefetched by the input pipeline
  return c
