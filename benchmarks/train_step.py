"""Training-step speed: electra_jax against the PyTorch / Hugging Face peer, side by side.

    pip install -e '.[hf]'
    python benchmarks/train_step.py [--size=small] [--batch=32] [--seq=128] [--steps=5]
        [--dtypes=float32,bfloat16] [--skip_peer] [--output=benchmarks/train_step.md]

Each contestant runs in its own fresh Python process, one after the other (never at the
same time), so their memory figures are their own; ours and the peer alternate for
--rounds rounds and each keeps its best round, so a load that comes and goes on a shared
machine does not decide the ratio:

* ``ours``: the real pretraining step (`electra_jax.train.build_training`: masking,
  generator on the masked slots, fp32 sampling, discriminator, AdamW, clipping,
  metrics), jitted with donated state on the devices the trainer's default makes of a
  CPU host (`config.mesh.cpu_devices=0`: one per core, the batch split by shard_map,
  `train_step.shard_map_gradients`), for each dtype in --dtypes.  The
  same process first measures a dense float32 (and bfloat16) matmul roofline with
  `jnp.dot` on square matrices (bfloat16 operands accumulating into float32, as the
  model's bfloat16 matmuls do), so utilisation = analytic model FLOP/s / roofline of the
  same process.  The analytic FLOP count (`electra_jax/flops.py`) is cross-checked against
  XLA's cost analysis of the same step lowered with unrolled layers (scanned layers are
  counted once by XLA).
  Like `python -m electra_jax.train`, the worker first re-executes itself with glibc's
  huge-page malloc (electra_jax/host_memory.py); ELECTRA_JAX_HUGE_PAGES=0 measures
  without.
* ``ours_one_device``: the float32 default again, in a process with one CPU device that
  uses every core (`--config.mesh.cpu_devices=1`).  --skip_one_device leaves it out.
* ``peer``: the same ELECTRA step built the way electra_pytorch does it, from Hugging
  Face transformers in PyTorch: ElectraForMaskedLM generator and ElectraForPreTraining
  discriminator of the same sizes sharing one embedding block and the output table,
  dynamic masking (85% [MASK]), generator logits on every position then gathered at the
  masked ones, fp32 Gumbel sampling without gradient, loss = MLM + 50 * RTD,
  torch.optim.AdamW, global-norm clipping, dropout on (train mode), float32, torch's
  intra-op threads = the cores.

Reported per contestant: compile (or first-step) time, steady-state tokens/s over
--steps timed steps (after two warm-up steps), model TFLOP/s and utilisation, and memory:
the peak resident set size of the process while the timed steps run (sampled every
2 ms; parameters, optimizer state, activations and the libraries' own footprint), plus
for ours the compiler's exact buffer sizes (`compiled.memory_analysis()`).

The random batch is full length (no padding), as pretraining examples almost always are.
Ratios are only meaningful within one run of this script on one machine.
"""

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from machine import cpu_model, rss_bytes  # pylint: disable=g-import-not-at-top,wrong-import-position

VOCAB_SIZE = 30522  # the original uncased WordPiece vocab
PAD, CLS, SEP, MASK = 0, 101, 102, 103  # its special ids


# ------------------------------------------------------------------------ measurement


class PeakRSS:
  """Peak resident set size of this process while the `with` block runs (bytes)."""

  def __init__(self, interval_s: float = 0.002):
    self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()

  def _run(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, rss_bytes())
      time.sleep(self.interval_s)

  def __enter__(self):
    self.peak = rss_bytes()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, rss_bytes())


def _config(size: str, batch: int, seq: int, dtype: str, scan_layers: bool = True,
            remat: str = ""):
  from electra_jax.config import pretrain_config  # pylint: disable=g-import-not-at-top
  c = pretrain_config(size)
  c.train.batch_size = batch
  c.data.max_seq_length = seq
  c.data.vocab_size = VOCAB_SIZE
  c.model.dtype = dtype
  c.model.scan_layers = scan_layers
  c.model.remat = remat or c.model.remat  # '' = the config default
  return c


def _random_batch(batch: int, seq: int, seed: int = 0):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  ids = rng.integers(1000, VOCAB_SIZE, size=(batch, seq), dtype=np.int32)
  ids[:, 0] = CLS
  ids[:, seq // 2] = SEP
  ids[:, -1] = SEP
  segment = np.zeros((batch, seq), np.int32)
  segment[:, seq // 2 + 1:] = 1
  return {"input_ids": ids, "input_mask": np.ones((batch, seq), np.int32),
          "segment_ids": segment}


# ------------------------------------------------------------------------------- ours


def matmul_roofline(dtype_name: str, sizes=(1024, 2048), repeats: int = 5) -> dict:
  """Best dense matmul GFLOP/s of XLA on this host for square matrices of `sizes`.

  Products accumulate and return float32, as the model's matmuls do (for bfloat16
  operands XLA:CPU uses AVX512-BF16 dot products that way, at about twice the float32
  rate; bf16 -> bf16 would convert both operands and run as float32).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dtype = jnp.dtype(dtype_name)
  best = {}
  for n in sizes:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      f(a, b).block_until_ready()
      times.append(time.perf_counter() - t0)
    best[n] = 2 * n ** 3 / min(times) / 1e9
  return {"gflops": max(best.values()), "by_size": best}


def xla_flops_unrolled(size: str, batch: int, seq: int, dtype: str) -> float:
  """XLA's FLOP count of the training step with unrolled layers (no compile needed)."""
  import jax  # pylint: disable=g-import-not-at-top
  from electra_jax import aot, parallel, train  # pylint: disable=g-import-not-at-top
  config = _config(size, batch, seq, dtype, scan_layers=False)
  mesh = parallel.make_mesh(config.mesh, jax.devices()[:1])
  training = train.build_training(config, aot.StandInTokenizer(VOCAB_SIZE), mesh)
  lowered = training.train_step.lower(training.abstract_state,
                                      training.abstract_batch(batch, seq))
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def run_ours(size: str, batch: int, seq: int, steps: int, dtype: str, remat: str,
             devices: int = 1) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from electra_jax import aot, flops, parallel, train  # pylint: disable=g-import-not-at-top
  baseline_rss = rss_bytes()
  config = _config(size, batch, seq, dtype, remat=remat)
  mesh = parallel.make_mesh(config.mesh, jax.devices()[:devices])
  training = train.build_training(config, aot.StandInTokenizer(VOCAB_SIZE), mesh)
  state = training.init_state(training.init_key)
  compiled, compile_s = training.compile_train_step(state, batch, seq)  # as the trainer does
  mem = compiled.memory_analysis()
  host = _random_batch(batch, seq)
  batches = [{k: jax.device_put(v, training.batch_sharding) for k, v in
              _random_batch(batch, seq, seed=i).items()} for i in range(2)]
  del host
  for i in range(2):  # warm-up
    state, sums = compiled(state, batches[i % 2])
  jax.block_until_ready((state, sums))
  with PeakRSS() as peak:
    t0 = time.perf_counter()
    for i in range(steps):
      state, sums = compiled(state, batches[i % 2])
    jax.block_until_ready((state, sums))
    elapsed = time.perf_counter() - t0
  analytic = flops.train_flops_per_step(config, VOCAB_SIZE)["total"]
  return {
      "name": f"electra_jax ({dtype}, remat {config.model.remat}, "
              + (f"{devices} devices)" if devices > 1 else "one device)"), "dtype": dtype,
      "remat": config.model.remat, "devices": devices, "compile_s": compile_s,
      "step_s": elapsed / steps, "tokens_per_s": batch * seq * steps / elapsed,
      "analytic_flops_per_step": analytic, "peak_rss": peak.peak,
      "baseline_rss": baseline_rss,
      "xla_buffers": {"arguments": mem.argument_size_in_bytes,
                      "outputs": mem.output_size_in_bytes,
                      "temporaries": mem.temp_size_in_bytes,
                      "aliased": mem.alias_size_in_bytes},
      "loss": float(sums["loss"]),
  }


def _start_ours(cpu_devices: int, rows: int, row_tokens: int) -> int:
  """Starts an `ours` worker process as `python -m electra_jax.train` starts: huge-page
  malloc, CPU unless JAX_PLATFORMS says otherwise, config.mesh.cpu_devices for a batch
  of `rows` x `row_tokens`; returns the number of devices the step runs on."""
  from electra_jax import host_memory, parallel  # pylint: disable=g-import-not-at-top
  host_memory.reexec_with_huge_pages()
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu") if not os.environ.get("JAX_PLATFORMS") else None
  parallel.use_cpu_devices(cpu_devices, rows=rows, row_tokens=row_tokens)  # before JAX starts
  return jax.device_count()


def worker_ours(args) -> dict:
  devices = _start_ours(0, args.batch, args.seq)  # the config default
  import jax  # pylint: disable=g-import-not-at-top
  result = {"device": str(jax.devices()[0].device_kind), "platform": jax.devices()[0].platform,
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
            "jax": jax.__version__, "roofline": {}, "runs": []}
  for dtype in args.dtypes.split(","):
    result["roofline"][dtype] = matmul_roofline(dtype)
  for dtype in args.dtypes.split(","):
    for remat in args.remats.split(","):
      result["runs"].append(run_ours(args.size, args.batch, args.seq, args.steps, dtype,
                                      remat, devices=devices))
  if not args.skip_xla_flops:
    result["xla_flops_unrolled"] = xla_flops_unrolled(args.size, args.batch, args.seq,
                                                      args.dtypes.split(",")[0])
  return result


def worker_ours_one_device(args) -> dict:
  """Ours as `--config.mesh.cpu_devices=1` runs it: one CPU device using every core."""
  devices = _start_ours(1, args.batch, args.seq)
  return run_ours(args.size, args.batch, args.seq, args.steps, "float32",
                  args.remats.split(",")[0], devices=devices)


# ------------------------------------------------------------------------------- peer


def _peer_sizes(size: str) -> tuple[dict, dict]:
  """(discriminator, generator) sizes of `size` by the same rule as electra_jax."""
  from electra_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from electra_jax.config import pretrain_config  # pylint: disable=g-import-not-at-top
  c = pretrain_config(size)
  disc = model_lib.encoder_config_from(c.model, VOCAB_SIZE)
  gen = model_lib.generator_config(disc, c.model.generator_size)
  as_hf = lambda e: dict(vocab_size=VOCAB_SIZE, embedding_size=e.embedding_size,
                         hidden_size=e.hidden_size, num_hidden_layers=e.num_layers,
                         num_attention_heads=e.num_heads,
                         intermediate_size=e.intermediate_size,
                         max_position_embeddings=e.max_position_embeddings,
                         type_vocab_size=e.type_vocab_size, hidden_act="gelu",
                         hidden_dropout_prob=e.dropout_rate,
                         attention_probs_dropout_prob=e.attention_dropout_rate,
                         layer_norm_eps=e.layer_norm_eps)
  return as_hf(disc), as_hf(gen), c


def worker_peer(args) -> dict:
  """The ELECTRA step as electra_pytorch builds it from transformers (see module doc)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  baseline_rss = rss_bytes()
  disc_kw, gen_kw, c = _peer_sizes(args.size)
  disc = transformers.ElectraForPreTraining(transformers.ElectraConfig(**disc_kw))
  gen = transformers.ElectraForMaskedLM(transformers.ElectraConfig(**gen_kw))
  # electra_pytorch: the generator uses the discriminator's embedding block, and its
  # output layer is the (shared) word table.
  gen.electra.embeddings = disc.electra.embeddings
  gen.generator_lm_head.weight = disc.electra.embeddings.word_embeddings.weight
  params = {id(p): p for m in (gen, disc) for p in m.parameters()}.values()
  no_decay = lambda n: "LayerNorm" in n or n.endswith("bias")
  named = {}
  for m in (disc, gen):
    for n, p in m.named_parameters():
      named.setdefault(id(p), (n, p))
  groups = [{"params": [p for n, p in named.values() if not no_decay(n)], "weight_decay": 0.01},
            {"params": [p for n, p in named.values() if no_decay(n)], "weight_decay": 0.0}]
  opt = torch.optim.AdamW(groups, lr=c.optim.learning_rate, betas=(0.9, 0.999), eps=1e-6)
  gen.train()
  disc.train()
  n_pred = int((c.pretrain.mask_prob + 0.005) * args.seq)
  bf16 = args.peer_dtype == "bfloat16"
  # bfloat16: torch's CPU autocast, the PyTorch way to compute in bf16 with fp32 params.
  autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

  def step(batch):
    ids, mask, seg = batch
    b, length = ids.shape
    special = (ids == CLS) | (ids == SEP) | (ids == PAD)
    scores = torch.rand(b, length).masked_fill(special, -1.0)
    positions = scores.topk(n_pred, dim=-1).indices  # [B, N]
    is_mlm = torch.zeros(b, length, dtype=torch.bool).scatter_(1, positions, True)
    show_mask = is_mlm & (torch.rand(b, length) < 0.85)
    masked_ids = ids.masked_fill(show_mask, MASK)
    with autocast():
      gen_logits = gen(input_ids=masked_ids, attention_mask=mask, token_type_ids=seg).logits
    mlm_logits = gen_logits[is_mlm].float()  # [B*N, V]
    mlm_loss = torch.nn.functional.cross_entropy(mlm_logits, ids[is_mlm])
    with torch.no_grad():
      u = torch.rand_like(mlm_logits, dtype=torch.float32)
      gumbel = -torch.log(-torch.log(u + 1e-9) + 1e-9)
      sampled = (mlm_logits.float() + gumbel).argmax(-1)
    fake = ids.clone()
    fake[is_mlm] = sampled
    labels = (fake != ids).float()
    with autocast():
      disc_logits = disc(input_ids=fake, attention_mask=mask, token_type_ids=seg).logits
    disc_logits = disc_logits.float()
    tok = mask.bool()
    disc_loss = torch.nn.functional.binary_cross_entropy_with_logits(disc_logits[tok],
                                                                     labels[tok])
    loss = mlm_loss + 50.0 * disc_loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(params), 1.0)
    opt.step()
    return loss.detach()

  batches = []
  for i in range(2):
    host = _random_batch(args.batch, args.seq, seed=i)
    batches.append(tuple(torch.from_numpy(host[k]).long()
                         for k in ("input_ids", "input_mask", "segment_ids")))
  t0 = time.perf_counter()
  step(batches[0])
  first_step_s = time.perf_counter() - t0
  step(batches[1])
  with PeakRSS() as peak:
    t0 = time.perf_counter()
    for i in range(args.steps):
      loss = step(batches[i % 2])
    elapsed = time.perf_counter() - t0
  from electra_jax import flops  # pylint: disable=g-import-not-at-top
  config = _config(args.size, args.batch, args.seq, "float32")
  analytic = flops.train_flops_per_step(config, VOCAB_SIZE)["total"]
  # The peer computes generator logits at every position, not only the masked ones:
  # count what it really does on top, for its own TFLOP/s figure.
  gen_hidden_to_vocab = 2 * 3 * gen_kw["embedding_size"] * VOCAB_SIZE * args.batch * (
      args.seq - n_pred)
  return {
      "name": f"HF transformers {transformers.__version__} / torch {torch.__version__} "
              + ("(bfloat16 autocast)" if bf16 else "(float32)"),
      "dtype": args.peer_dtype, "compile_s": first_step_s, "step_s": elapsed / args.steps,
      "tokens_per_s": args.batch * args.seq * args.steps / elapsed,
      "analytic_flops_per_step": analytic, "extra_flops_per_step": gen_hidden_to_vocab,
      "peak_rss": peak.peak, "baseline_rss": baseline_rss, "loss": float(loss),
      "threads": torch.get_num_threads(),
  }


# ----------------------------------------------------------------------------- driver


def _spawn(worker: str, argv: list[str]) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f"--worker={worker}"] + argv
  out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
  for line in reversed(out.stdout.splitlines()):
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  raise RuntimeError(f"{worker} printed no result:\n{out.stdout}\n{out.stderr}")


def _best(old: dict | None, new: dict) -> dict:
  """Per run, the round with the higher tokens/s (a shared machine only slows runs down)."""
  if old is None:
    return new
  if "runs" not in new:
    return new if new["tokens_per_s"] > old["tokens_per_s"] else old
  runs = [n if n["tokens_per_s"] > o["tokens_per_s"] else o
          for o, n in zip(old["runs"], new["runs"])]
  roofline = {d: max(old["roofline"][d], new["roofline"][d], key=lambda r: r["gflops"])
              for d in new["roofline"]}
  return {**new, "runs": runs, "roofline": roofline}


def _mib(x: float) -> str:
  return f"{x / 2 ** 20:,.0f} MiB"


def report(args, ours: dict, peers: dict, ours_one: dict | None = None) -> str:
  """The markdown report; `peers` maps a dtype to the peer's run in it."""
  peer = peers.get("float32")
  fp32_roof = ours["roofline"].get("float32", {}).get("gflops")
  lines = [
      "# Training step: electra_jax vs the PyTorch / Hugging Face peer",
      "",
      f"ELECTRA-{args.size}, objective electra, batch {args.batch} x {args.seq} tokens, "
      f"vocab {VOCAB_SIZE}, dropout on, {args.steps} timed steps after 2 warm-up steps, best "
      f"of {args.rounds} alternating rounds.",
      f"Machine: {os.cpu_count()} x {cpu_model()}, {ours['platform']} "
      f"(jax {ours['jax']}); measured {datetime.datetime.now():%Y-%m-%d %H:%M}.",
      f"Command: `python benchmarks/train_step.py {' '.join(args.forwarded)}`",
      "",
      "Dense matmul roofline in the same process as ours (best of 1024^2 and 2048^2 "
      "`jnp.dot`): " + ", ".join(f"{d} {r['gflops']:.1f} GFLOP/s"
                                   for d, r in ours["roofline"].items()) + ".",
      "",
      "| contestant | compile / first step | tokens/s | model TFLOP/s | utilisation of "
      "the matmul roofline | peak RSS in the timed steps |",
      "| --- | ---: | ---: | ---: | ---: | ---: |",
  ]
  rows = list(ours["runs"]) + ([ours_one] if ours_one else []) + list(peers.values())
  for r in rows:
    tflops = r["analytic_flops_per_step"] / r["step_s"] / 1e12
    roof = ours["roofline"].get(r["dtype"], {}).get("gflops", fp32_roof)
    lines.append(f"| {r['name']} | {r['compile_s']:.1f} s | {r['tokens_per_s']:,.0f} | "
                 f"{tflops:.4f} | {100 * tflops * 1e3 / roof:.0f}% of {r['dtype']} | "
                 f"{_mib(r['peak_rss'])} |")
  lines.append("")
  fp32 = next((r for r in ours["runs"] if r["dtype"] == "float32"), ours["runs"][0])
  if peer:
    lines.append(
        f"Ratios, ours float32 (remat {fp32['remat']}, {fp32['devices']} device(s): the "
        f"defaults) / peer: tokens/s **{fp32['tokens_per_s'] / peer['tokens_per_s']:.2f}x**, "
        f"peak RSS **{fp32['peak_rss'] / peer['peak_rss']:.2f}x**.")
    if ours_one:
      lines.append(f"Ours float32 on one device (`--config.mesh.cpu_devices=1`) / "
                   f"peer: tokens/s **{ours_one['tokens_per_s'] / peer['tokens_per_s']:.2f}x**, "
                   f"peak RSS {ours_one['peak_rss'] / peer['peak_rss']:.2f}x.")
    for r in ours["runs"]:
      if r is not fp32:
        same = peers.get(r["dtype"]) if r["dtype"] != "float32" else None
        lines.append(f"Ours {r['dtype']}, remat {r['remat']} / peer (float32): tokens/s "
                     f"{r['tokens_per_s'] / peer['tokens_per_s']:.2f}x, peak RSS "
                     f"{r['peak_rss'] / peer['peak_rss']:.2f}x"
                     + (f"; / the peer in {r['dtype']}: tokens/s "
                        f"**{r['tokens_per_s'] / same['tokens_per_s']:.2f}x**, peak RSS "
                        f"{r['peak_rss'] / same['peak_rss']:.2f}x." if same else "."))
    lines.append(
        f"The peer computes generator logits at all {args.seq} positions, as "
        f"electra_pytorch does: {peer['extra_flops_per_step'] / 1e9:.1f} GFLOP per step more "
        f"than the model FLOPs above (which count only the masked slots).")
  lines.append("")
  tunables = ours.get("glibc_tunables", "")
  lines.append(f"Ours ran with GLIBC_TUNABLES={tunables}, as `python -m electra_jax.train` does "
               "(electra_jax/host_memory.py); the peer with the machine's defaults."
               if tunables else "Ours ran without glibc's huge-page malloc.")
  buf = fp32["xla_buffers"]
  lines.append(
      f"Ours float32, XLA's buffers"
      + (f" per device ({fp32['devices']} devices)" if fp32["devices"] > 1 else "")
      + f": arguments {_mib(buf['arguments'])} (params, Adam "
      f"moments, batch; donated and aliased {_mib(buf['aliased'])}), temporaries "
      f"{_mib(buf['temporaries'])}.  Process RSS before building the model: "
      f"{_mib(fp32['baseline_rss'])}" + (f"; the peer's after importing torch and "
                                          f"transformers: {_mib(peer['baseline_rss'])}."
                                          if peer else "."))
  if "xla_flops_unrolled" in ours:
    a = fp32["analytic_flops_per_step"]
    x = ours["xla_flops_unrolled"]
    lines.append(f"FLOPs per step: analytic {a / 1e9:.1f} GFLOP (matmuls only), XLA cost "
                 f"analysis of the unrolled step {x / 1e9:.1f} GFLOP "
                 f"(analytic / XLA = {a / x:.3f}).")
  lines.append("")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="small")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--remats", default="dots,none",
                      help="remat policies for ours; the first is the config default")
  parser.add_argument("--rounds", type=int, default=2,
                      help="ours and the peer run alternately this many times; best kept")
  parser.add_argument("--skip_peer", action="store_true")
  parser.add_argument("--skip_one_device", action="store_true",
                      help="skip ours on one CPU device (config.mesh.cpu_devices=1)")
  parser.add_argument("--skip_xla_flops", action="store_true")
  parser.add_argument("--output", default="")
  parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
  parser.add_argument("--peer_dtype", default="float32", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    result = {"ours": worker_ours, "ours_one_device": worker_ours_one_device,
              "peer": worker_peer}[args.worker](args)
    print("RESULT " + json.dumps(result), flush=True)
    return
  args.forwarded = [a for a in sys.argv[1:] if not a.startswith("--output")]
  ours = ours_one = None
  peers = {}
  for _ in range(args.rounds):  # alternate, keep each contestant's best round
    ours = _best(ours, _spawn("ours", args.forwarded))
    if not args.skip_one_device and ours["runs"][0]["devices"] > 1:
      ours_one = _best(ours_one, _spawn("ours_one_device", args.forwarded))
    if not args.skip_peer:
      # float32 always (the ratios' reference, as before), then ours' other dtypes.
      for dtype in dict.fromkeys(["float32"] + args.dtypes.split(",")):
        peers[dtype] = _best(peers.get(dtype),
                             _spawn("peer", args.forwarded + [f"--peer_dtype={dtype}"]))
  text = report(args, ours, peers, ours_one)
  print(text)
  if args.output:
    pathlib.Path(args.output).write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
