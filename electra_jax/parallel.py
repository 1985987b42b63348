"""Devices, hosts and shardings: the one place that decides where arrays live.

* `initialize_distributed()` joins a multi-host job (TPU pod slice, SLURM, or an
  explicit coordinator) before anything touches a device; one host needs nothing.
* `make_mesh(config.mesh)` builds the ('data', 'fsdp') device Mesh; a size of -1
  fills the remaining devices.
* `state_shardings(abstract_state, mesh)` applies the parameter rule below to the
  whole training state (params and optimizer moments alike, so Adam's state is
  sharded exactly like its parameter).
* `batch_sharding(mesh)` splits the batch over both axes: every device holds a
  different slice of the global batch, FSDP or not.

Parameter rule (fully sharded data parallelism): a tensor with at least
`MIN_SHARD_SIZE` elements is split along 'fsdp' on its largest dimension that the
'fsdp' size divides, never along the stacked-layer axis of scanned layers (each
scan iteration gathers one layer); smaller or indivisible tensors are replicated.
With fsdp=1 everything is replicated: plain data parallelism.
"""

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from electra_jax.errors import UserInputError

AXES = ("data", "fsdp")
BATCH_AXES = AXES  # the batch dimension is split over every mesh axis
MIN_SHARD_SIZE = 2 ** 14  # smaller tensors (biases, LayerNorms) stay replicated
# The automatic CPU device count leaves each device at least this many tokens per step:
# on 2 cores two devices beat one from 512 tokens each (ELECTRA-Small 8 x 128: level to
# 6% faster; Tiny 16 x 128: 1.6x), and lost below (Tiny 8 x 32: 9% slower).
MIN_CPU_DEVICE_TOKENS = 512

# Environment variables that mean "this process is one of several".
_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def _is_multiprocess_environment() -> bool:
  if any(os.environ.get(k) for k in _MULTIHOST_ENV):
    return True
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in os.environ:
    return True  # inside `srun` with several tasks
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1  # a multi-host TPU slice


def initialize_distributed(mode: str = "auto") -> bool:
  """Calls `jax.distributed.initialize()` when this is one process of several.

  mode: 'auto' (when the environment shows several processes: a multi-host TPU
  slice, `srun` with several tasks, or JAX_COORDINATOR_ADDRESS set), 'on' (always;
  JAX reads the cluster from the environment) or 'off'.  Returns whether it ran.
  Must run before any other JAX call touches a device.
  """
  if mode not in ("auto", "on", "off"):
    raise UserInputError(f"distributed mode must be 'auto', 'on' or 'off', got {mode!r}")
  if not _joins_distributed(mode):
    return False
  if jax.distributed.is_initialized():
    return True
  kwargs = {}
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                  num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                  process_id=int(os.environ["JAX_PROCESS_ID"]))
  try:
    jax.distributed.initialize(**kwargs)
  except (KeyError, ValueError, RuntimeError) as e:
    raise UserInputError(f"jax.distributed.initialize() failed ({str(e).splitlines()[0]}); "
                         f"set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and "
                         f"JAX_PROCESS_ID, or run on one host") from e
  return True


def _joins_distributed(mode: str) -> bool:
  """Whether `initialize_distributed(mode)` joins a multi-process job."""
  return mode == "on" or (mode == "auto" and _is_multiprocess_environment())


def mesh_shape(data: int, fsdp: int, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) sizes with one -1 filled in; UserInputError if they do not fit."""
  sizes = [data, fsdp]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise UserInputError(f"config.mesh data={data}, fsdp={fsdp}: give positive sizes, "
                         f"at most one of them -1 (fill the remaining devices)")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise UserInputError(f"config.mesh data={data}, fsdp={fsdp}: {known} does not divide "
                           f"the {num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // known
  if sizes[0] * sizes[1] != num_devices:
    raise UserInputError(f"config.mesh data={sizes[0]} x fsdp={sizes[1]} = "
                         f"{sizes[0] * sizes[1]} devices, but there are {num_devices}; "
                         f"use -1 for one axis to fill the rest")
  return sizes[0], sizes[1]


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """The ('data', 'fsdp') Mesh over `devices` (default: every device of every host)."""
  devices = list(jax.devices() if devices is None else devices)
  data, fsdp = mesh_shape(mesh_cfg.data, mesh_cfg.fsdp, len(devices))
  try:
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
    grid = mesh_utils.create_device_mesh((data, fsdp), devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(data, fsdp)
  return Mesh(grid, AXES)


def param_spec(shape: tuple[int, ...], fsdp: int, stacked: bool = False) -> P:
  """The PartitionSpec the module docstring's rule gives a tensor of `shape`."""
  if fsdp <= 1 or int(np.prod(shape, dtype=np.int64)) < MIN_SHARD_SIZE:
    return P()
  first = 1 if stacked else 0
  candidates = [i for i in range(first, len(shape)) if shape[i] % fsdp == 0]
  if not candidates:
    return P()
  axis = max(candidates, key=lambda i: (shape[i], i))  # largest; ties: the last
  spec = [None] * len(shape)
  spec[axis] = "fsdp"
  return P(*spec)


def _is_stacked(path) -> bool:
  """Scanned layers live under a 'layer' key with a leading [num_layers] axis."""
  return any(getattr(k, "key", None) == "layer" for k in path)


def state_shardings(abstract_tree: Any, mesh: Mesh) -> Any:
  """NamedShardings for every leaf of `abstract_tree` (arrays or ShapeDtypeStructs)."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, param_spec(tuple(x.shape), fsdp, _is_stacked(path))),
      abstract_tree)


def splits_batch_by_shard_map(mesh: Mesh) -> bool:
  """Whether the step splits the batch over 'data' by shard_map (train_step's
  `shard_map_gradients`): on CPU meshes of several devices whose params are not
  sharded (fsdp=1).  Elsewhere the partitioner splits it from the shardings."""
  return (mesh.devices.flat[0].platform == "cpu" and mesh.shape["fsdp"] == 1
          and mesh.shape["data"] > 1)


def host_cores() -> int:
  """CPU cores this process may run on (its affinity mask, else the machine's count)."""
  try:
    return len(os.sched_getaffinity(0)) or 1
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def use_cpu_devices(count: int, rows: int | None = None, row_tokens: int = 1,
                    distributed: str = "auto") -> int:
  """Makes the host's CPU backend `count` devices; returns the count set, 0 if it left
  JAX's own count (one device, or what XLA_FLAGS asks for) as it was.

  Call it before anything starts JAX's backends.  Several CPU devices run a CPU mesh's
  data parallelism on separate cores (config.mesh.cpu_devices): the batch is split by
  shard_map, and the small single-threaded parts of the step (the batched attention
  matmuls above all) run side by side instead of leaving cores idle.

  count 0 (the default) is automatic: one device per core, as many as divide `rows`
  (the sequences of one micro-batch on this host, `row_tokens` tokens each) and leave
  each device `MIN_CPU_DEVICE_TOKENS` tokens or more.  It leaves JAX alone when JAX has
  started already (in a notebook, or a test), when XLA_FLAGS'
  --xla_force_host_platform_device_count or jax_num_cpu_devices chose a count, and in a
  multi-process run (`distributed` 'on', or 'auto' in a multi-host environment).
  An explicit count is applied or fails with a clear error.
  """
  if count < 0:
    raise UserInputError(f"config.mesh.cpu_devices must be >= 0 (0 = one per core), "
                         f"got {count}")
  automatic = count == 0
  if automatic:
    count = _automatic_cpu_devices(rows, row_tokens, distributed)
  if count == 1:
    return 0
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as e:
    if automatic:  # JAX has started: its devices stand
      return 0
    raise UserInputError(f"config.mesh.cpu_devices={count} needs to take effect before "
                         f"JAX starts; run training in a fresh process") from e
  return count


def _automatic_cpu_devices(rows: int | None, row_tokens: int, distributed: str) -> int:
  """config.mesh.cpu_devices=0 in this process: 1 where the count is someone else's
  choice (see `use_cpu_devices`), else `automatic_cpu_device_count`."""
  if ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
      or jax.config.jax_num_cpu_devices >= 0 or _joins_distributed(distributed)):
    return 1
  return automatic_cpu_device_count(rows, host_cores(), row_tokens)


def automatic_cpu_device_count(rows: int | None, cores: int, row_tokens: int = 1) -> int:
  """The most CPU devices, at most one per core, that split `rows` evenly and leave each
  device at least MIN_CPU_DEVICE_TOKENS tokens (`row_tokens` per row); at least 1."""
  if not rows:
    return cores
  return max(d for d in range(1, min(cores, rows) + 1)
             if rows % d == 0 and (d == 1 or rows // d * row_tokens >= MIN_CPU_DEVICE_TOKENS))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batch rows split over every device ('data' x 'fsdp')."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
