"""Tests of electra_jax.aot, the TPU ahead-of-time check.

Without libtpu (`pip install -e '.[tpu]'`) only the checks that need no compiler
run: topology parsing, the roofline arithmetic, the out-of-memory parser and the
missing-libtpu error.  With it, one CLI run compiles configs/tiny.py for a v5e:2x2
slice (20-30 s on a 2-core host: libtpu's TPU compile of a whole training step is
slow even for a tiny model; objective 'mlm', with one tower, compiles in about 2/3
of the time of 'electra').
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from electra_jax import aot
from electra_jax import flops
from electra_jax.config import pretrain_config
from electra_jax.errors import UserInputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config=configs/tiny.py", "--config.data.vocab_size=1000",
        "--config.model.dtype=bfloat16", "--config.objective=mlm",
        "--config.train.batch_size=16", "--config.data.max_seq_length=64"]


def _run_cli(args, *, preamble="pass"):
  """Runs `python -m electra_jax.aot ARGS` (after `preamble`, Python) in the repo root."""
  code = (f"import runpy, sys; {preamble}; sys.argv = ['aot'] + {list(args)!r}; "
          f"runpy.run_module('electra_jax.aot', run_name='__main__')")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600, check=False)


def _tiny_config():
  c = pretrain_config("tiny")
  c.data.vocab_size = 1000
  c.model.dtype = "bfloat16"
  c.objective = "mlm"
  c.train.batch_size = 16
  c.data.max_seq_length = 64
  return c


# ----------------------------------------------------------------------------- no libtpu needed


@pytest.mark.parametrize("bad", ["v5e", "v5e:", "v9:2x2", "tpu-v5e-8", "v5e:2x4x1", "v4:2x2",
                                 "v5p:2x0x1", "V5E:2x4", ""])
def test_parse_topology_rejects_bad_strings(bad):
  with pytest.raises(UserInputError, match="--topology="):
    aot.parse_topology(bad)


def test_parse_topology():
  chip, shape = aot.parse_topology("v5e:2x4")
  assert (chip.name, shape) == ("v5e", (2, 4))
  chip, shape = aot.parse_topology("v4:2x2x1")
  assert (chip.name, shape, chip.chip_config) == ("v4", (2, 2, 1), "megacore")


def test_roofline_picks_the_slower_bound():
  chip = aot.CHIPS["v5e"]
  # 197e12 FLOPs take 1 s at peak; 819e9 bytes take 1 s at the HBM bandwidth.
  est = aot.roofline(chip, flops_per_device=2 * 197e12, hbm_bytes_per_device=819e9)
  assert est["bound"] == "compute"
  assert est["step_s"] == pytest.approx(2.0)
  assert est["mfu"] == pytest.approx(1.0)
  est = aot.roofline(chip, flops_per_device=197e12, hbm_bytes_per_device=4 * 819e9)
  assert est["bound"] == "memory"
  assert est["step_s"] == pytest.approx(4.0)
  assert est["mfu"] == pytest.approx(0.25)


def test_hbm_traffic_counts_state_once_and_temporaries_twice_per_micro_batch():
  memory = {"argument_bytes": 100, "output_bytes": 90, "temp_bytes": 1000}
  assert aot.hbm_traffic(memory, grad_accum_steps=1) == 2190
  assert aot.hbm_traffic(memory, grad_accum_steps=4) == 100 + 90 + 8000
  # Listed temporaries beyond the compiler's peak are not counted.
  assert aot.hbm_traffic(dict(memory, compiler_peak_bytes=600), 1) == 100 + 90 + 1200


def test_memory_total_is_the_compiler_peak_when_reported():
  raw = {"argument_bytes": 10, "output_bytes": 10, "alias_bytes": 9, "temp_bytes": 100,
         "generated_code_bytes": 5}
  assert aot.memory_totals(raw)["total_bytes"] == 10 + 10 - 9 + 100 + 5
  got = aot.memory_totals(dict(raw, compiler_peak_bytes=80))
  assert (got["sum_bytes"], got["total_bytes"]) == (116, 80)


def test_parse_out_of_memory():
  # libtpu 0.0.42's message for a program over v5e's HBM.
  msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
         "temporaries (22.40G) exceeds available HBM (15.75G).")
  got = aot.parse_out_of_memory(msg)
  assert got["required_bytes"] == int(22.40 * 2 ** 30)
  assert got["available_bytes"] == int(15.75 * 2 ** 30)
  got = aot.parse_out_of_memory("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out "
                                "of memory in memory space hbm. Used 18.62G of 15.75G hbm.")
  assert got == {"required_bytes": int(18.62 * 2 ** 30),
                 "available_bytes": int(15.75 * 2 ** 30)}
  assert aot.parse_out_of_memory("INVALID_ARGUMENT: something else") is None


def _fake_compiles(monkeypatch, fits_up_to: int, num_devices: int = 4):
  """compile_report stand-in: a step fits up to `fits_up_to` sequences; its need is
  linear in the batch (1 unit of HBM per sequence, `fits_up_to` units available)."""
  compiled = []

  def fake_compile_report(config, topology):
    b = config.train.batch_size
    compiled.append(b)
    fits = b <= fits_up_to
    memory = {"total_bytes": b} if fits else {"required_bytes": b,
                                              "available_bytes": fits_up_to}
    return {"topology": topology, "batch_size": b, "fits": fits, "memory": memory,
            "compile_s": 0.0}

  monkeypatch.setattr(aot, "topology_devices", lambda t: (aot.CHIPS["v5e"], [None] * num_devices))
  monkeypatch.setattr(aot, "compile_report", fake_compile_report)
  return compiled


@pytest.mark.parametrize("start, fits_up_to, grow, want, want_compiled", [
    (32, 100, True, 64, [32, 64, 128]),  # doubles while it fits
    (32, 100, False, 32, [32]),  # the table's mode: never above the start
    (256, 100, True, 64, [256, 64]),  # 256 needs 2.56x: 128 cannot fit, not compiled
    (2048, 100, False, 64, [2048, 64]),  # needs 20x: skips straight to 1/32
    (2048, 3, False, None, [2048, 4]),  # not even one sequence per device (compiled to see)
    (24, 10, False, 8, [16, 8]),  # starts at 24 rounded down to 4 x 2^k
])
def test_sweep_batch(monkeypatch, start, fits_up_to, grow, want, want_compiled):
  compiled = _fake_compiles(monkeypatch, fits_up_to)
  config = _tiny_config()
  config.train.batch_size = start
  best, tried = aot.sweep_batch(config, "v5e:2x2", grow=grow, log=lambda line: None)
  assert (best and best["batch_size"]) == want
  assert compiled == want_compiled
  assert [r["batch_size"] for r in tried] == sorted(want_compiled)


def test_missing_libtpu_is_a_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "libtpu", None)  # `import libtpu` raises ImportError
  with pytest.raises(UserInputError, match=r"pip install -e '\.\[tpu\]'"):
    aot.topology_devices("v5e:2x2")


def test_cli_missing_libtpu_exits_2():
  r = _run_cli(TINY + ["--topology=v5e:2x2"], preamble="sys.modules['libtpu'] = None")
  assert r.returncode == 2, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: libtpu is not installed") and ".[tpu]" in last


def test_cli_bad_topology_exits_2():
  r = _run_cli(TINY + ["--topology=v5e-8"])
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1].startswith("error: --topology='v5e-8' is not")


# ----------------------------------------------------------------------------- with libtpu


@pytest.fixture(scope="module")
def tiny_aot(tmp_path_factory):
  """(stdout, JSON dict) of one CLI run compiling tiny for v5e:2x2."""
  pytest.importorskip("libtpu")
  path = tmp_path_factory.mktemp("aot") / "tiny.json"
  r = _run_cli(TINY + ["--topology=v5e:2x2", f"--json={path}"])
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout, json.loads(path.read_text(encoding="utf-8"))


def test_libtpu_rejects_a_slice_it_does_not_know(monkeypatch):
  pytest.importorskip("libtpu")
  monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # what aot sets; undone after
  with pytest.raises(UserInputError, match="not a slice libtpu knows"):
    aot.topology_devices("v5e:3x7")  # not whole 2x2 hosts


def test_topology_devices_one_per_chip(monkeypatch):
  pytest.importorskip("libtpu")
  monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  for topology, n, kind in [("v5e:2x4", 8, "TPU v5 lite"), ("v4:2x2x1", 4, "TPU v4"),
                            ("v5p:2x2x1", 4, "TPU v5"), ("v6e:2x2", 4, "TPU v6 lite")]:
    _, devices = aot.topology_devices(topology)
    assert (len(devices), devices[0].device_kind) == (n, kind), topology


def test_tiny_compiles_and_fits(tiny_aot):
  _, report = tiny_aot
  assert report["fits"] is True
  assert (report["topology"], report["num_devices"], report["device_kind"]) == (
      "v5e:2x2", 4, "TPU v5 lite")
  assert report["config_file"] == "configs/tiny.py"
  assert (report["batch_size"], report["seq_len"]) == (16, 64)
  assert report["model"]["dtype"] == "bfloat16"
  assert report["mesh"] == {"data": 4, "fsdp": 1}
  mem = report["memory"]
  assert all(mem[k] > 0 for k in ("argument_bytes", "output_bytes", "temp_bytes",
                                  "generated_code_bytes", "total_bytes"))
  assert mem["total_bytes"] < report["hbm_bytes_per_chip"]


def test_tiny_argument_memory_holds_the_replicated_state(tiny_aot):
  """With fsdp=1 every device holds the whole state: params + Adam's two moments (+ step)."""
  _, report = tiny_aot
  from electra_jax import train  # pylint: disable=g-import-not-at-top
  from electra_jax import parallel  # pylint: disable=g-import-not-at-top
  config = _tiny_config()
  mesh = parallel.make_mesh(config.mesh, jax.devices()[:1])
  training = train.build_training(config, aot.StandInTokenizer(1000), mesh)
  state_bytes = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                    for x in jax.tree.leaves(training.abstract_state))
  batch_bytes = 3 * 16 * 64 * 4 // 4  # three int32 [16, 64] arrays split over 4 devices
  args = report["memory"]["argument_bytes"]
  # TPU layouts pad small dimensions (tiny's 64-wide tensors to 128 lanes): up to 2x.
  # A sharded state would be a quarter of it.
  assert state_bytes + batch_bytes <= args < 2 * (state_bytes + batch_bytes)
  # The new state is written over the donated one.
  assert report["memory"]["alias_bytes"] >= 0.99 * state_bytes


def test_tiny_flops_are_the_analytic_count(tiny_aot):
  _, report = tiny_aot
  want = flops.train_flops_per_step(_tiny_config(), 1000)["total"]
  assert report["flops_per_step"] == want
  assert report["flops_per_device"] == pytest.approx(want / 4)
  assert report["tokens_per_step"] == 16 * 64


def test_tiny_estimate_is_the_roofline_of_the_reported_numbers(tiny_aot):
  _, report = tiny_aot
  est, mem, chip = report["estimate"], report["memory"], aot.CHIPS["v5e"]
  temp = min(mem["temp_bytes"], mem["compiler_peak_bytes"] or mem["temp_bytes"])
  assert est["hbm_bytes"] == mem["argument_bytes"] + mem["output_bytes"] + 2 * temp
  assert mem["total_bytes"] == (mem["compiler_peak_bytes"] or mem["sum_bytes"])
  want = max(report["flops_per_device"] / chip.peak_flops, est["hbm_bytes"] / chip.hbm_bytes_per_s)
  assert est["step_s"] == pytest.approx(want)
  assert est["tokens_per_s"] == pytest.approx(16 * 64 / want)
  assert 0 < est["mfu"] <= 1
  assert est["mfu"] == pytest.approx(report["flops_per_device"] / want / chip.peak_flops)


def test_tiny_printed_report(tiny_aot):
  out, report = tiny_aot
  assert "v5e:2x2 = 4 x TPU v5 lite" in out
  assert "fits" in out and "ESTIMATE, not a measurement" in out
  assert f"{report['flops_per_step']:.4g} total" in out
  assert "optimal_seconds" not in out
