"""Ahead-of-time check of the training step for a TPU slice, from a CPU host.

    pip install -e '.[tpu]'     # libtpu: compiles for TPUs, no TPU needed
    python -m electra_jax.aot --config=configs/base.py --topology=v5e:2x4 \\
        --config.model.dtype=bfloat16 [--config.train.batch_size=128] \\
        [--json=FILE] [--sweep_batch]

Compiles the REAL training step (`electra_jax.train.build_training` on a Mesh of
the topology's compile-only devices, every sharding as in a run) with libtpu and
prints, per device:

* memory from `compiled.memory_analysis()`: arguments (params, optimizer state,
  batch slice), outputs, temporaries and generated code as libtpu lists them, and
  the compiler's peak against the chip's HBM.  The TPU compiler refuses a program
  that does not fit; that is reported as "does not fit" with the compiler's own
  numbers (needed and available).
* FLOPs per step from the analytic count (`electra_jax/flops.py`), and per device.
* an ESTIMATED step time from a roofline on the chip's published peak bf16 FLOP/s
  and HBM bandwidth (`CHIPS`), and the tokens/s and MFU it implies.  It is not a
  measurement: a lower bound on the step time (an upper bound on MFU), see
  `roofline`.  `cost_analysis()` is not used: its 'optimal_seconds' comes out
  negative for these steps and it counts a scanned layer once.

`--sweep_batch` compiles powers-of-two global batches (multiples of the device
count) to find the largest that fits, and reports that one.  `--topology` is
`<chip>:<shape>` with chip in v4, v5e, v5p, v6e: e.g. v5e:2x4 (8 chips), v6e:2x2,
v4:2x2x1 and v5p:2x2x1 (4 chips each; one JAX device per chip).  Config overrides
(`--config.train.batch_size=...`) work as in `electra_jax.train`; the vocab is
config.data.vocab when set, else a stand-in of config.data.vocab_size ids with
BERT's special ids.  Compile times on a 2-core host: ~20 s tiny, ~2-3 min small,
~6-8 min base or large (a step that does not fit is refused in ~20 s).

The command runs JAX on the CPU (JAX_PLATFORMS=cpu unless set) and sets
ALLOW_MULTIPLE_LIBTPU_LOAD=1, so it neither waits for nor takes libtpu's lock on
a TPU host's chips (/tmp/libtpu_lockfile) that another JAX process may hold.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import re
import time
from typing import Any

import ml_collections

from electra_jax.errors import UserInputError

INSTALL_HINT = "pip install -e '.[tpu]'"


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip specs of a TPU generation (one JAX device per chip)."""
  name: str  # the topology prefix, e.g. 'v5e'
  device_kind: str  # jax Device.device_kind of its compile-only devices
  hbm_bytes: int
  peak_flops: float  # dense bf16 FLOP/s
  hbm_bytes_per_s: float
  dims: int  # rank of the topology shape: 2 (2D torus) or 3 (3D torus)
  chip_config: str | None  # libtpu chip_config_name; 'megacore' = both TensorCores one device


GiB = 2 ** 30

# Google's published per-chip specs (Cloud TPU system architecture pages):
#   v4   https://cloud.google.com/tpu/docs/v4   275 TFLOP/s bf16, 32 GiB HBM2, 1200 GB/s
#   v5e  https://cloud.google.com/tpu/docs/v5e  197 TFLOP/s bf16, 16 GB HBM2, 819 GB/s
#   v5p  https://cloud.google.com/tpu/docs/v5p  459 TFLOP/s bf16, 95 GB HBM2e, 2765 GB/s
#   v6e  https://cloud.google.com/tpu/docs/v6e  918 TFLOP/s bf16, 32 GB HBM, 1638 GB/s
# Capacities are taken as GiB (the pages mix GB and GiB; the runtime keeps a little
# back: libtpu gives a v5e program 15.75 GiB).  v4 and v5p chips have two TensorCores,
# driven as one JAX device ("megacore"), as on a real v4/v5p VM.
CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", "TPU v4", 32 * GiB, 275e12, 1200e9, 3, "megacore"),
    "v5e": Chip("v5e", "TPU v5 lite", 16 * GiB, 197e12, 819e9, 2, None),
    "v5p": Chip("v5p", "TPU v5", 95 * GiB, 459e12, 2765e9, 3, "megacore"),
    "v6e": Chip("v6e", "TPU v6 lite", 32 * GiB, 918e12, 1638e9, 2, None),
}

_TOPOLOGY_EXAMPLES = "e.g. v5e:2x4, v6e:2x2, v4:2x2x1, v5p:2x2x1"


# ----------------------------------------------------------------------------- topology


def parse_topology(topology: str) -> tuple[Chip, tuple[int, ...]]:
  """(chip, shape) of '<chip>:<AxB[xC]>'; UserInputError when it is not one."""
  m = re.fullmatch(r"\s*([a-z0-9]+):(\d+(?:x\d+)*)\s*", topology or "")
  if not m or m.group(1) not in CHIPS:
    raise UserInputError(
        f"--topology={topology!r} is not <chip>:<shape> with chip in "
        f"{', '.join(CHIPS)} ({_TOPOLOGY_EXAMPLES})")
  chip = CHIPS[m.group(1)]
  shape = tuple(int(d) for d in m.group(2).split("x"))
  if len(shape) != chip.dims or min(shape) < 1:
    example = "2x2x1" if chip.dims == 3 else "2x4"
    raise UserInputError(
        f"--topology={topology!r}: a {chip.name} slice shape has {chip.dims} positive "
        f"dimensions, e.g. {chip.name}:{example}")
  return chip, shape


def require_libtpu() -> str:
  """The installed libtpu version; UserInputError when libtpu is missing."""
  try:
    importlib.import_module("libtpu")
  except ImportError as e:
    raise UserInputError(f"libtpu is not installed; the TPU ahead-of-time check needs it: "
                         f"{INSTALL_HINT} (works on a CPU host)") from e
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    return metadata.version("libtpu")
  except metadata.PackageNotFoundError:
    return "unknown"


def topology_devices(topology: str) -> tuple[Chip, list[Any]]:
  """(chip, compile-only devices) of a TPU slice, e.g. 'v5e:2x4' -> 8 devices."""
  chip, shape = parse_topology(topology)
  require_libtpu()
  # Compile-only devices touch no TPU: do not take (or wait for) the lock on the host's
  # chips that libtpu holds for a process using them (read when libtpu loads).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  name = f"{chip.name}:{'x'.join(map(str, shape))}"
  kwargs = {"chip_config_name": chip.chip_config} if chip.chip_config else {}
  try:
    desc = topologies.get_topology_desc(name, "tpu", **kwargs)
  except Exception as e:  # pylint: disable=broad-except  (JaxRuntimeError from libtpu)
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UserInputError(f"--topology={topology!r} is not a slice libtpu knows ({first}); "
                         f"{_TOPOLOGY_EXAMPLES}") from e
  devices = list(desc.devices)
  if devices and devices[0].device_kind != chip.device_kind:
    raise RuntimeError(f"libtpu made {devices[0].device_kind!r} devices for {name}, "
                       f"expected {chip.device_kind!r}: update CHIPS in electra_jax/aot.py")
  return chip, devices


# ----------------------------------------------------------------------------- estimate


def roofline(chip: Chip, flops_per_device: float, hbm_bytes_per_device: float
             ) -> dict[str, Any]:
  """ESTIMATED step time of a step on one device: max(compute, memory) time.

  compute_s = flops / peak bf16 FLOP/s; memory_s = bytes / HBM bandwidth.  The
  step cannot be faster than either, so step_s is a lower bound on the real step
  time, and mfu (= compute_s / step_s) an upper bound on the real MFU.
  """
  compute_s = flops_per_device / chip.peak_flops
  memory_s = hbm_bytes_per_device / chip.hbm_bytes_per_s
  step_s = max(compute_s, memory_s)
  return {"compute_s": compute_s, "memory_s": memory_s, "step_s": step_s,
          "bound": "compute" if compute_s >= memory_s else "memory",
          "mfu": compute_s / step_s if step_s > 0 else 0.0,
          "hbm_bytes": hbm_bytes_per_device,
          "peak_flops": chip.peak_flops, "hbm_bytes_per_s": chip.hbm_bytes_per_s}


def hbm_traffic(memory: dict[str, int], grad_accum_steps: int) -> int:
  """Lower bound on the HBM bytes one device moves per step.

  Every argument (params, optimizer state, batch) is read once and every output
  written once; the temporaries (activations kept for the backward pass,
  gradients, ...) are written once and read once per micro-batch, counting them
  at most at the compiler's peak (libtpu's listed temporaries can exceed it).
  Real programs move more (attention and elementwise intermediates are re-read),
  so the memory time from this is optimistic too.
  """
  temp = memory["temp_bytes"]
  if memory.get("compiler_peak_bytes"):
    temp = min(temp, memory["compiler_peak_bytes"])
  return memory["argument_bytes"] + memory["output_bytes"] + 2 * temp * grad_accum_steps


def estimate(report: dict[str, Any]) -> dict[str, Any]:
  """The roofline ESTIMATE of a fitting `compile_report` (see `roofline`), with
  tokens_per_s."""
  est = roofline(CHIPS[report["chip"]], report["flops_per_device"],
                 hbm_traffic(report["memory"], report["grad_accum_steps"]))
  est["tokens_per_s"] = report["tokens_per_step"] / est["step_s"]
  return est


# ----------------------------------------------------------------------------- compile


@dataclasses.dataclass(frozen=True)
class StandInTokenizer:
  """What build_training reads from a tokenizer: vocab size and BERT's special ids."""
  vocab_size: int
  pad_id: int = 0
  unk_id: int = 100
  cls_id: int = 101
  sep_id: int = 102
  mask_id: int = 103


def _tokenizer(config: ml_collections.ConfigDict):
  if config.data.get("vocab"):
    from electra_jax.tokenization import load_tokenizer  # pylint: disable=g-import-not-at-top
    return load_tokenizer(config.data.vocab)
  vocab_size = int(config.data.vocab_size)
  if vocab_size <= StandInTokenizer.mask_id:
    raise UserInputError(f"config.data.vocab_size={vocab_size} must exceed "
                         f"{StandInTokenizer.mask_id} (BERT's [MASK] id) for the stand-in vocab")
  return StandInTokenizer(vocab_size)


def _check_config(config: ml_collections.ConfigDict, num_devices: int):
  """train.validate_config's checks, with the slice's device count instead of the host's."""
  from electra_jax import parallel, train  # pylint: disable=g-import-not-at-top
  t = config.train
  parallel.mesh_shape(config.mesh.data, config.mesh.fsdp, num_devices)
  if t.grad_accum_steps <= 0 or t.batch_size <= 0:
    raise UserInputError(f"config.train.batch_size={t.batch_size} and grad_accum_steps="
                         f"{t.grad_accum_steps} must be positive")
  step = num_devices * t.grad_accum_steps
  if t.batch_size % step:
    raise UserInputError(
        f"config.train.batch_size={t.batch_size} does not split into {t.grad_accum_steps} "
        f"micro-batch(es) over the slice's {num_devices} devices; use a multiple of {step}, "
        f"e.g. --config.train.batch_size={max(step, t.batch_size // step * step)}")
  # The rest of validate_config (objective, sharing, lengths, ...) does not depend on the
  # devices; checked on a copy whose mesh and batch fit this host's devices.
  host = ml_collections.ConfigDict(config.to_dict())
  host.mesh.data, host.mesh.fsdp = -1, 1
  host.train.batch_size = host.train.grad_accum_steps * _host_device_count()
  train.validate_config(host)


def _host_device_count() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.device_count()


def _memory(compiled) -> dict[str, int]:
  stats = compiled.memory_analysis()
  if stats is None:
    raise RuntimeError("libtpu gave no memory_analysis() for the compiled step")
  memory = {
      "argument_bytes": int(stats.argument_size_in_bytes),
      "output_bytes": int(stats.output_size_in_bytes),
      "alias_bytes": int(stats.alias_size_in_bytes),
      "temp_bytes": int(stats.temp_size_in_bytes),
      "generated_code_bytes": int(stats.generated_code_size_in_bytes),
  }
  memory["compiler_peak_bytes"] = int(getattr(stats, "peak_memory_in_bytes", 0) or 0)
  return memory_totals(memory)


def memory_totals(memory: dict[str, int]) -> dict[str, int]:
  """`memory` with sum_bytes (arguments + outputs - aliased + temporaries + code) and
  total_bytes: the compiler's peak when libtpu reports one, else that sum.

  The peak is what libtpu holds against the chip's HBM.  The listed temporaries
  can exceed it (ELECTRA-base at batch 128 on v4: 31.9 GiB listed, 23.6 GiB peak,
  and the step compiled against 30.75 GiB available), so the sum is only a
  breakdown.
  """
  memory = dict(memory)
  # Outputs aliased to donated arguments (the new state) take no extra memory.
  memory["sum_bytes"] = (memory["argument_bytes"] + memory["output_bytes"]
                         - memory["alias_bytes"] + memory["temp_bytes"]
                         + memory["generated_code_bytes"])
  memory["total_bytes"] = memory.get("compiler_peak_bytes") or memory["sum_bytes"]
  return memory


_SIZE = r"([0-9.]+)\s*([KMGT]i?B?|B)?"
_UNITS = {"": 1, "B": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def _bytes(number: str, unit: str | None) -> int:
  return int(float(number) * _UNITS[(unit or "").rstrip("iB")[:1]])


def parse_out_of_memory(message: str) -> dict[str, int] | None:
  """{'required_bytes', 'available_bytes'} from libtpu's out-of-HBM compile error,
  or None when `message` is not one."""
  if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
    return None
  patterns = (
      rf"required for [^(]*\({_SIZE}\) exceeds available HBM \({_SIZE}\)",
      rf"Used {_SIZE} of {_SIZE} hbm",
  )
  for pattern in patterns:
    m = re.search(pattern, message)
    if m:
      return {"required_bytes": _bytes(m.group(1), m.group(2)),
              "available_bytes": _bytes(m.group(3), m.group(4))}
  return {"required_bytes": 0, "available_bytes": 0}


def compile_report(config: ml_collections.ConfigDict, topology: str) -> dict[str, Any]:
  """Compiles `config`'s training step for `topology`; the numbers as a dict.

  Keys: topology, chip, device_kind, num_devices, libtpu, model (objective, size,
  dtype, layers, hidden, vocab_size), batch_size, seq_len, grad_accum_steps, mesh,
  fits, memory (per device, bytes; on a refused compile the compiler's
  required/available), flops_per_step, flops_per_device, tokens_per_step, estimate
  (roofline: compute_s, memory_s, step_s, tokens_per_s, mfu, ...; None when it
  does not fit), compile_s.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from electra_jax import flops, parallel, train  # pylint: disable=g-import-not-at-top

  chip, devices = topology_devices(topology)
  libtpu_version = require_libtpu()
  n = len(devices)
  _check_config(config, n)
  tokenizer = _tokenizer(config)
  mesh = parallel.make_mesh(config.mesh, devices)
  t = config.train
  seq_len = config.data.max_seq_length
  training = train.build_training(config, tokenizer, mesh)

  report: dict[str, Any] = {
      "topology": topology, "chip": chip.name, "device_kind": devices[0].device_kind,
      "num_devices": n, "libtpu": libtpu_version,
      "model": {"objective": config.objective, "size": config.model.get("size", ""),
                "dtype": config.model.dtype, "num_layers": config.model.num_layers,
                "hidden_size": config.model.hidden_size,
                "generator_size": config.model.generator_size,
                "remat": config.model.get("remat", "none"),
                "vocab_size": tokenizer.vocab_size},
      "batch_size": t.batch_size, "seq_len": seq_len,
      "grad_accum_steps": t.grad_accum_steps,
      "mesh": {"data": mesh.shape["data"], "fsdp": mesh.shape["fsdp"]},
      "hbm_bytes_per_chip": chip.hbm_bytes,
  }
  count = flops.train_flops_per_step(config, tokenizer.vocab_size)["total"]
  report.update(flops_per_step=count, flops_per_device=count / n,
                tokens_per_step=t.batch_size * seq_len)

  t0 = time.perf_counter()
  lowered = training.train_step.lower(training.abstract_state,
                                      training.abstract_batch(t.batch_size, seq_len))
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    oom = parse_out_of_memory(str(e))
    if oom is None:
      raise
    report.update(fits=False, memory=oom, estimate=None,
                  compile_s=time.perf_counter() - t0,
                  error=str(e).splitlines()[0][:300])
    return report
  report["compile_s"] = time.perf_counter() - t0
  report.update(fits=True, memory=_memory(compiled))
  report["estimate"] = estimate(report)
  return report


def sweep_batch(config: ml_collections.ConfigDict, topology: str, *, grow: bool = True,
                max_doublings: int = 12, log=print
                ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
  """(report of the largest global batch that fits or None, every report compiled).

  Batches are (devices x grad_accum_steps) x 2^k.  Starting from the config's batch
  rounded down to one of those, it halves while the step does not fit (skipping
  the halvings that the compiler's "needs X of Y" already rules out: temporaries
  shrink at most in proportion to the batch) and, with `grow`, doubles while it
  fits, up to (devices x grad_accum_steps) x 2^max_doublings.  `log` gets one line
  per compile.
  """
  _, devices = topology_devices(topology)
  unit = len(devices) * config.train.grad_accum_steps
  k = max(0, int(math.floor(math.log2(max(1, config.train.batch_size // unit)))))
  tried: dict[int, dict[str, Any]] = {}

  def attempt(k: int) -> bool:
    if k not in tried:
      c = ml_collections.ConfigDict(config.to_dict())
      c.train.batch_size = unit * 2 ** k
      tried[k] = compile_report(c, topology)
      log(_progress_line(tried[k]))
    return tried[k]["fits"]

  def reports():
    return [tried[i] for i in sorted(tried)]

  if attempt(k):
    while grow and k < max_doublings and attempt(k + 1):
      k += 1
    return tried[k], reports()
  while k > 0:
    mem = tried[k]["memory"]
    ratio = mem.get("required_bytes", 0) / max(1, mem.get("available_bytes", 0))
    k = max(0, k - max(1, math.ceil(math.log2(ratio)) if ratio > 1 else 1))
    if attempt(k):
      return tried[k], reports()
  return None, reports()


def _progress_line(report: dict[str, Any]) -> str:
  if report["fits"]:
    verdict = f"fits, {report['memory']['total_bytes'] / GiB:.2f} GiB per device"
  else:
    mem = report["memory"]
    verdict = "does not fit" + (
        f" (needs {mem['required_bytes'] / GiB:.2f} of {mem['available_bytes'] / GiB:.2f} GiB)"
        if mem.get("required_bytes") else "")
  return (f"  batch {report['batch_size']} on {report['topology']}: {verdict} "
          f"(compiled in {report['compile_s']:.0f}s)")


# ----------------------------------------------------------------------------- output


def _gib(x: float) -> str:
  """Bytes as GiB, or MiB below 1 GiB."""
  return f"{x / GiB:.2f} GiB" if x >= GiB else f"{x / 2 ** 20:.1f} MiB"


def _ms(seconds: float) -> str:
  return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} us"


def _si(x: float, unit: str) -> str:
  for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(x) >= factor:
      return f"{x / factor:.3g} {prefix}{unit}"
  return f"{x:.3g} {unit}"


def format_report(r: dict[str, Any]) -> str:
  """The human-readable report of `compile_report`'s dict."""
  m, chip = r["model"], CHIPS[r["chip"]]
  lines = [
      f"TPU ahead-of-time check: {r['topology']} = {r['num_devices']} x {r['device_kind']} "
      f"(libtpu {r['libtpu']})",
      f"model: {m['size'] or 'custom'} ({m['num_layers']} layers x {m['hidden_size']}, "
      f"generator {m['generator_size']:.3g}), objective {m['objective']}, vocab "
      f"{m['vocab_size']}, {m['dtype']} compute, remat {m['remat']}",
      f"step: global batch {r['batch_size']} x {r['seq_len']} tokens "
      f"({r['batch_size'] // r['num_devices']} sequences per device), grad_accum_steps "
      f"{r['grad_accum_steps']}, mesh data {r['mesh']['data']} x fsdp {r['mesh']['fsdp']}",
  ]
  if m["dtype"] != "bfloat16":
    lines.append(f"note: config.model.dtype={m['dtype']}; TPU runs use "
                 f"--config.model.dtype=bfloat16 (the estimate below assumes bf16 matmuls)")
  mem = r["memory"]
  if r["fits"]:
    total = mem["total_bytes"]
    lines += [
        "memory per device (compiled.memory_analysis()):",
        f"  arguments       {_gib(mem['argument_bytes']):>12}  (params, optimizer state, "
        f"batch slice)",
        f"  outputs         {_gib(mem['output_bytes']):>12}  ({_gib(mem['alias_bytes'])} "
        f"aliased to the donated state)",
        f"  temporaries     {_gib(mem['temp_bytes']):>12}  (as listed; can exceed the peak)",
        f"  generated code  {_gib(mem['generated_code_bytes']):>12}",
        f"  total           {_gib(total):>12}  "
        + ("(the compiler's peak, which it holds against HBM)"
           if mem.get("compiler_peak_bytes") else "(arguments + outputs - aliased + "
           "temporaries + code)"),
        f"  fits: {_gib(total)} of {_gib(chip.hbm_bytes)} HBM per chip "
        f"({100 * total / chip.hbm_bytes:.0f}%)",
    ]
  else:
    need = (f": needs {_gib(mem['required_bytes'])} of the {_gib(mem['available_bytes'])} "
            f"available" if mem.get("required_bytes") else "")
    lines += [f"memory per device: DOES NOT FIT{need} (the TPU compiler refused the "
              f"step: {r.get('error', '')})",
              "  lower --config.train.batch_size (with --config.train.grad_accum_steps to "
              "keep the global batch), or set --config.model.remat=full or "
              "--config.mesh.fsdp"]
  lines.append(f"FLOPs per step (analytic, electra_jax/flops.py): {r['flops_per_step']:.4g} "
               f"total, {r['flops_per_device']:.4g} per device")
  est = r["estimate"]
  if est:
    lines += [
        f"ESTIMATE, not a measurement (roofline on {chip.name}'s published "
        f"{_si(chip.peak_flops, 'FLOP/s')} bf16 and {_si(chip.hbm_bytes_per_s, 'B/s')} HBM):",
        f"  compute time    {_ms(est['compute_s']):>12}  (FLOPs per device / peak)",
        f"  memory time     {_ms(est['memory_s']):>12}  ({_gib(est['hbm_bytes'])} "
        f"per device: arguments and outputs once, temporaries written and read once)",
        f"  est. step time  {_ms(est['step_s']):>12}  ({est['bound']}-bound) -> "
        f"{est['tokens_per_s']:,.0f} tokens/s, MFU {100 * est['mfu']:.0f}% at this "
        f"estimate",
        "  (a roofline is a lower bound on the step time and an upper bound on MFU; "
        "measure on the TPU)",
    ]
  return "\n".join(lines)


def write_json(path: str, data: Any):
  """Writes `data` to `path` atomically (a temp file in the same directory, renamed)."""
  path = os.path.abspath(os.path.expanduser(path))
  parent = os.path.dirname(path)
  if not os.path.isdir(parent):
    raise UserInputError(f"--json={path}: directory {parent} does not exist")
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


# ----------------------------------------------------------------------------- CLI


def main(argv=None):  # pylint: disable=unused-argument
  """The command line: flags from _define_flags()."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  parse_topology(f.topology)  # cheap checks first, before libtpu loads
  if f.json and not os.path.isdir(os.path.dirname(os.path.abspath(f.json))):
    raise UserInputError(f"--json={f.json}: its directory does not exist")
  require_libtpu()
  if "JAX_PLATFORMS" not in os.environ:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_platforms", "cpu")  # the host computes nothing; TPUs are compile-only
  config = f.config
  result: dict[str, Any]
  if f.sweep_batch:
    print(f"sweeping the global batch on {f.topology} (powers of two per device):", flush=True)
    best, tried = sweep_batch(config, f.topology, log=lambda line: print(line, flush=True))
    if best is None:
      print(f"no batch fits on {f.topology}, not even one sequence per device", flush=True)
      result = {"largest_fitting": None, "tried": tried}
    else:
      print(f"largest global batch that fits on {f.topology}: {best['batch_size']}", flush=True)
      print(format_report(best), flush=True)
      result = dict(best, largest_fitting=best["batch_size"],
                    tried=[{"batch_size": r["batch_size"], "fits": r["fits"],
                            "memory": r["memory"]} for r in tried])
  else:
    result = compile_report(config, f.topology)
    print(format_report(result), flush=True)
  result["config_file"] = config_flags.get_config_filename(f["config"])
  if f.json:
    write_json(f.json, result)
    print(f"wrote {f.json}", flush=True)


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "Pretraining config file (configs/*.py).",
                                  lock_config=True)
  flags.DEFINE_string("topology", None, f"TPU slice <chip>:<shape>, {_TOPOLOGY_EXAMPLES}.")
  flags.DEFINE_string("json", None, "Also write the numbers to this JSON file.")
  flags.DEFINE_bool("sweep_batch", False,
                    "Find the largest power-of-two global batch that fits.")
  flags.mark_flags_as_required(["config", "topology"])


if __name__ == "__main__":
  from electra_jax import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(main)
