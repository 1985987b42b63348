#!/usr/bin/env bash
# Pretraining on all GPUs of one machine: one process drives every local GPU and the
# global batch (config.train.batch_size) is split across them.
#
#   pip install -e '.[gpu]'    # = jax[cuda12]: CUDA 12 and cuDNN come as pip wheels; the
#                              # machine needs only a recent NVIDIA driver (JAX's install
#                              # guide gives the minimum version)
#   launch/gpu_single_host.sh --config=configs/base.py --workdir=runs/base \
#       [--config.data.dataset_dir=data/owt128] [--config.x.y=...]
#
# Every argument goes to `python -m electra_jax.train`; rerunning resumes from the newest
# checkpoint in the workdir.  CUDA_VISIBLE_DEVICES=0,1 restricts it to some GPUs.
# PYTHON=/path/to/python picks the interpreter (default: python on PATH).
set -euo pipefail

if (($# == 0)); then
  echo "error: pass the training flags, e.g. $0 --config=configs/base.py --workdir=runs/base (-h for help)" >&2
  exit 2
fi
if [[ $1 == -h || $1 == --help ]]; then
  # The comment block at the top of this file.
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
python_bin=${PYTHON:-python}

# A CPU-only jax would "work" very slowly: refuse early with the fix.
if ! "$python_bin" -c 'import sys, jax; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
  echo "error: JAX sees no GPU with $python_bin; install the CUDA build: pip install -e '.[gpu]' (or pip install 'jax[cuda12]') and check nvidia-smi" >&2
  exit 2
fi

# Overlap the gradient all-reduce with compute; preallocate most of the GPU memory.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"

exec "$python_bin" -m electra_jax.train "$@"
