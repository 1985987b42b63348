"""Data speed: the dataset builder (MB/s of raw text) and the input pipeline.

    python benchmarks/data_throughput.py [--corpus=../shared/corpus]
        [--workdir=/tmp/electra_data_throughput] [--vocab_size=30522]
        [--workers=1,2] [--batches=200] [--warmup=20]
        [--out=benchmarks/data_throughput.md] [--append] [--label=TEXT]

1. Trains a SentencePiece vocab (`electra_jax.data.vocab`) on a seeded sample of
   --vocab_sentences lines of the corpus, cached in --workdir.
2. Builds the dataset from every *.txt of the corpus with
   `python -m electra_jax.data.build --max_seq_length=128` once per --workers
   count, in a fresh process each (as a user runs it), and reports MB/s of raw
   text: over the whole command (interpreter start and imports included) and
   as the builder itself reports it ("done in"), plus the CPU seconds of all
   its processes.  It checks that the record files do not depend on the worker
   count.  (Run from a shell like this, the builder forks its workers.)
3. Times `electra_jax.data.pipeline.train_iterator` on the built train split,
   global batch 128 x 128 on one host, default prefetch/threads: --batches
   batches after --warmup, as examples/s and tokens/s (all positions, and
   non-padding).

Writes a Markdown section (machine, date, command, results) to --out (replacing
the file, or appended with --append).  Wall-clock figures depend on what else
runs on the machine: the section records the contention before each build
(load average, and the share of a core a busy loop gets), and the CPU seconds,
which depend much less on it.
"""

import argparse
import datetime
import glob
import hashlib
import importlib.util
import os
import pathlib
import platform
import re
import resource
import shlex
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if importlib.util.find_spec("electra_jax") is None:
  sys.path.insert(0, str(REPO))

from machine import cpu_model  # pylint: disable=g-import-not-at-top,wrong-import-position

SEQ_LEN = 128
BATCH = 128
# Training consumption to compare the pipeline with (tokens/s).
CONSUMERS = (("ELECTRA-Small training on this CPU", 500),
             ("a TPU v5e-8 slice (ELECTRA-Small)", 1e6))


def _parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--corpus", default=str(REPO.parent / "shared" / "corpus"))
  p.add_argument("--workdir", default="/tmp/electra_data_throughput")
  p.add_argument("--vocab_size", type=int, default=30522)
  p.add_argument("--vocab_sentences", type=int, default=40000,
                 help="lines sampled from the corpus to train the vocab on")
  p.add_argument("--workers", default="1,2",
                 help="comma-separated --num_workers values to build with")
  p.add_argument("--batches", type=int, default=200)
  p.add_argument("--warmup", type=int, default=20)
  p.add_argument("--out", default=str(REPO / "benchmarks" /
                                      "data_throughput.md"))
  p.add_argument("--append", action="store_true",
                 help="append a section to --out instead of replacing it")
  p.add_argument("--label", default="",
                 help="names the run in the Markdown heading")
  return p.parse_args(argv)


# ----------------------------------------------------------------------------
# Machine


def _git(*args: str) -> str:
  try:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return ""


def _code_version() -> str:
  """Where electra_jax comes from and, for this checkout, its commit."""
  spec = importlib.util.find_spec("electra_jax")
  where = pathlib.Path(spec.origin).parent.parent if spec else REPO
  if where.resolve() != REPO.resolve():
    return f"electra_jax from {where}"
  commit = _git("rev-parse", "--short", "HEAD") or "unknown commit"
  dirty = " + uncommitted changes" if _git("status", "--porcelain") else ""
  return f"{commit}{dirty}"


# ----------------------------------------------------------------------------
# Builder


def _vocab(corpus_files, workdir: pathlib.Path, size: int,
           sentences: int) -> str:
  """A SentencePiece model trained on a sample of the corpus (cached)."""
  out = workdir / f"vocab{size}_{sentences}"
  model = out / "spm.model"
  if not model.exists():
    subprocess.run(
        [sys.executable, "-m", "electra_jax.data.vocab",
         f"--input={','.join(corpus_files)}", f"--vocab_size={size}",
         f"--max_sentences={sentences}", f"--output={out}", "--overwrite"],
        check=True, cwd=workdir)
  return str(model)


def _free_share(seconds: float = 0.5) -> float:
  """The share of one core a busy loop gets now (1 = idle machine)."""
  cpu0, t0 = time.process_time(), time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    pass
  return (time.process_time() - cpu0) / (time.perf_counter() - t0)


def _children_cpu_s() -> float:
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def _build(corpus_glob: str, vocab: str, output: pathlib.Path,
           workers: int) -> dict:
  """Runs the builder CLI once; returns its timings."""
  cmd = [sys.executable, "-m", "electra_jax.data.build",
         f"--input={corpus_glob}", f"--vocab={vocab}",
         f"--max_seq_length={SEQ_LEN}", f"--output_dir={output}",
         f"--num_workers={workers}", "--overwrite"]
  load, free = os.getloadavg()[0], _free_share()
  cpu0, t0 = _children_cpu_s(), time.perf_counter()
  # From a directory without an electra_jax in it: `python -m` puts the
  # working directory first on sys.path, ahead of PYTHONPATH and the install.
  res = subprocess.run(cmd, capture_output=True, text=True, check=False,
                       cwd=output.parent)
  wall = time.perf_counter() - t0
  cpu = _children_cpu_s() - cpu0
  if res.returncode:
    sys.exit(f"the build failed:\n{res.stderr.strip()}")
  done = re.search(r"done in ([\d.]+) s \(([\d.]+) MB", res.stdout)
  if not done:
    sys.exit(f"no 'done in' line in the builder's output:\n{res.stdout}")
  print(res.stdout.strip().splitlines()[-1], flush=True)
  return {"workers": workers, "wall_s": wall, "cpu_s": cpu, "load": load,
          "free": free,
          "builder_s": float(done.group(1)), "cmd": shlex.join(cmd)}


def _record_digest(output: pathlib.Path) -> str:
  """sha256 over the dataset's record files (names and bytes)."""
  h = hashlib.sha256()
  for path in sorted(output.glob("*/*/*.array_record*")):
    h.update(path.name.encode())
    h.update(path.read_bytes())
  return h.hexdigest()[:16]


# ----------------------------------------------------------------------------
# Input pipeline


def _pipeline(dataset_dir: pathlib.Path, batches: int, warmup: int) -> dict:
  from electra_jax.data import dataset  # pylint: disable=g-import-not-at-top
  from electra_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  built = dataset.open_dataset(str(dataset_dir))
  it = pipeline.train_iterator(built.sources["train"], global_batch_size=BATCH,
                               seed=0, process_index=0, process_count=1)
  for _ in range(warmup):
    next(it)
  real = 0
  cpu0, t0 = time.process_time(), time.perf_counter()
  for _ in range(batches):
    batch = next(it)
    real += int(batch["input_mask"].sum())
  wall = time.perf_counter() - t0
  examples = batches * BATCH
  return {"examples_s": examples / wall,
          "tokens_s": examples * SEQ_LEN / wall,
          "real_tokens_s": real / wall,
          "cpu_s": time.process_time() - cpu0, "wall_s": wall,
          "train_examples": len(built.sources["train"])}


# ----------------------------------------------------------------------------
# Report


def _markdown(args, info: dict, builds: list, identical: bool | None,
              pipe: dict) -> str:
  mb = info["corpus_mb"]
  lines = [
      f"## {info['date']}{f' - {args.label}' if args.label else ''}",
      "",
      f"- Machine: {info['nproc']} CPU(s) usable (`nproc`), "
      f"{info['cpu_model']}; Python {platform.python_version()}.",
      f"- Code: {info['code']}.",
      f"- Command: `{info['command']}`",
      f"- Corpus: {info['corpus']} ({info['files']} files, {mb:.1f} MB of raw "
      f"text); vocab: SentencePiece unigram, {args.vocab_size} pieces, "
      f"trained on {args.vocab_sentences} sampled lines; "
      f"max_seq_length {SEQ_LEN}.",
      "",
      "Builder (`python -m electra_jax.data.build`, one fresh process per "
      "row):",
      "",
      "| workers | load avg before | free core share before | command wall s "
      "| MB/s (command) | MB/s (builder's own) | CPU s, all processes | "
      "MB per CPU s |",
      "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for b in builds:
    lines.append(
        f"| {b['workers']} | {b['load']:.1f} | {b['free']:.2f} | "
        f"{b['wall_s']:.2f} | "
        f"{mb / b['wall_s']:.2f} | {mb / b['builder_s']:.2f} | "
        f"{b['cpu_s']:.2f} | {mb / b['cpu_s']:.2f} |")
  if identical is not None:
    lines += ["", "Record files identical for every worker count: "
              f"{'yes' if identical else 'NO'}."]
  lines += [
      "",
      f"Input pipeline (`train_iterator`, global batch {BATCH} x {SEQ_LEN}, "
      f"one host, default prefetch and threads; {args.batches} batches after "
      f"{args.warmup} warm-up, train split of {pipe['train_examples']:,} "
      "examples):",
      "",
      "| examples/s | tokens/s (all positions) | non-padding tokens/s | "
      "CPU s / wall s |",
      "| ---: | ---: | ---: | ---: |",
      f"| {pipe['examples_s']:,.0f} | {pipe['tokens_s']:,.0f} | "
      f"{pipe['real_tokens_s']:,.0f} | {pipe['cpu_s'] / pipe['wall_s']:.2f} |",
      "",
  ]
  for name, rate in CONSUMERS:
    lines.append(f"- {pipe['tokens_s'] / rate:,.0f}x what {name} consumes "
                 f"(~{rate:,.0f} tokens/s).")
  lines.append("")
  return "\n".join(lines)


_HEADER = """# Data throughput

Measured by `benchmarks/data_throughput.py` (see its docstring for the method).
The machine is shared: other people's jobs run on the same cores, so
wall-clock MB/s varies from run to run with the contention, shown as the
1-minute load average (it lags) and as the share of one core a busy loop got
just before the build (1.00 = idle); the CPU seconds vary much less.  Each
section below is one run of the script; "before" sections ran the same script
with PYTHONPATH pointing at an export (`git archive`) of the previous commit's
electra_jax.

"""


def main(argv=None):
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  workdir = pathlib.Path(args.workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  args.corpus = os.path.abspath(args.corpus)
  files = sorted(glob.glob(os.path.join(args.corpus, "*.txt")))
  if not files:
    sys.exit(f"no *.txt files in --corpus={args.corpus}")
  info = {
      "date": datetime.datetime.now(datetime.timezone.utc).strftime(
          "%Y-%m-%d %H:%M UTC"),
      "nproc": len(os.sched_getaffinity(0)),
      "cpu_model": cpu_model(),
      "code": _code_version(),
      "command": shlex.join(["python", *sys.argv]),
      "corpus": args.corpus,
      "files": len(files),
      "corpus_mb": sum(os.path.getsize(f) for f in files) / 1e6,
  }
  vocab = _vocab(files, workdir, args.vocab_size, args.vocab_sentences)
  builds, digests = [], set()
  for workers in [int(w) for w in args.workers.split(",")]:
    output = workdir / f"dataset_w{workers}"
    builds.append(_build(os.path.join(args.corpus, "*.txt"), vocab, output,
                         workers))
    digests.add(_record_digest(output))
  identical = len(digests) == 1 if len(builds) > 1 else None
  pipe = _pipeline(output, args.batches, args.warmup)
  print(f"pipeline: {pipe['examples_s']:,.0f} examples/s, "
        f"{pipe['tokens_s']:,.0f} tokens/s", flush=True)

  section = _markdown(args, info, builds, identical, pipe)
  out = pathlib.Path(args.out)
  if args.append and out.exists():
    text = out.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + section
  else:
    text = _HEADER + section
  out.write_text(text, encoding="utf-8")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
