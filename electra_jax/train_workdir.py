"""What pretraining keeps in its workdir (local or gs://, through etils.epath):
config.json (checked on resume), vocab/, and checkpoints/<step>/state; plus the
checks that the workdir is writable and has room for the checkpoints, and the
readers other tools (fine-tuning, Hugging Face export) use on a finished run."""

import json
import os
import shutil
from typing import Any

import jax
import numpy as np
from etils import epath

from electra_jax import workdir as workdir_io
from electra_jax.errors import UserInputError
from electra_jax.tokenization import Tokenizer, load_tokenizer
from electra_jax.train_step import TrainState


# Config sections that must not change when resuming from a workdir's checkpoint.
_FROZEN_ON_RESUME = ("objective", "model", "pretrain.mask_prob", "data.max_seq_length")
# Keys of those sections that may change on resume: how the same math is computed
# (e.g. turn on remat or bf16 after an out-of-memory error), not what is computed.
_FREE_ON_RESUME = ("model.remat", "model.dtype")


def check_workdir_config(workdir: str, config, vocab_fingerprint: str):
  """Writes config.json on a fresh workdir; on resume refuses a different model/data setup."""
  path = epath.Path(workdir) / "config.json"
  current = json.loads(config.to_json_best_effort())
  current["vocab_fingerprint"] = vocab_fingerprint
  if path.exists():
    saved = json.loads(path.read_text(encoding="utf-8"))
    for key in _FROZEN_ON_RESUME + ("vocab_fingerprint",):
      old, new = _frozen_part(saved, key), _frozen_part(current, key)
      if old != new:
        raise UserInputError(
            f"workdir {workdir} holds a run with {key}={json.dumps(old)} but the config now has "
            f"{json.dumps(new)}; resume with the original settings or use a new --workdir")
  if jax.process_index() == 0:
    workdir_io.write_text_atomic(path, json.dumps(current, indent=2, sort_keys=True))


def _frozen_part(tree, dotted):
  """`tree`'s value at `dotted`, without the keys of _FREE_ON_RESUME below it."""
  value = _lookup(tree, dotted)
  if isinstance(value, dict):
    free = {k[len(dotted) + 1:] for k in _FREE_ON_RESUME if k.startswith(dotted + ".")}
    value = {k: v for k, v in value.items() if k not in free}
  return value


def _lookup(tree, dotted):
  for part in dotted.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return None
    tree = tree[part]
  return tree


def read_workdir_config(workdir: str) -> tuple[dict, Tokenizer]:
  """(saved config.json as a dict, tokenizer of WORKDIR/vocab/) of a pretraining workdir.

  Checks what every reader of a finished run relies on: config.json parses and has a
  'model' section, checkpoints/ exists, and the vocab matches the recorded fingerprint.
  """
  path = workdir_io.resolve(workdir)
  config_path = epath.Path(path) / "config.json"
  if not (config_path.is_file() and epath.Path(workdir_io.checkpoint_dir(path)).is_dir()):
    raise UserInputError(f"{path} is not a pretraining workdir (expected config.json and "
                         f"checkpoints/ from electra_jax.train)")
  try:
    saved = json.loads(config_path.read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise UserInputError(f"cannot read {config_path} ({e}); is it a pretraining workdir?") from e
  if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
    raise UserInputError(f"{config_path} has no 'model' section; is it a pretraining workdir?")
  vocab_dir = epath.Path(path) / "vocab"
  files = sorted(f.name for f in vocab_dir.iterdir()
                 if not f.name.endswith(workdir_io.TMP_SUFFIX)) if vocab_dir.is_dir() else []
  if not files:
    raise UserInputError(f"pretraining workdir {path} has no vocab/ file; it was not "
                         f"written by electra_jax.train, or is incomplete")
  tokenizer = load_tokenizer(os.fspath(vocab_dir / files[0]))  # reads through epath
  want = saved.get("vocab_fingerprint")
  if want and tokenizer.fingerprint != want:
    raise UserInputError(
        f"vocab mismatch in {path}: vocab/{files[0]} has fingerprint "
        f"{tokenizer.fingerprint} but config.json records {want}; restore the original "
        f"vocab file")
  return saved, tokenizer


def check_workdir_writable(workdir: str):
  """Fails before training when the workdir cannot be created or written."""
  if jax.process_index() != 0:
    return
  probe = epath.Path(workdir) / f".write-test-{os.getpid()}"
  try:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    probe.write_text("ok", encoding="utf-8")
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except
    # Not only OSError: object-store clients raise their own types (HTTP 403, no bucket).
    raise UserInputError(f"workdir {workdir} is not writable ({_one_line(e)}); pass a "
                         f"writable --workdir") from e


def _one_line(e: Exception) -> str:
  """An exception as one short line (object-store errors often span several)."""
  text = getattr(e, "strerror", None) or str(e).strip() or type(e).__name__
  return text.splitlines()[0][:200]


def check_workdir_space(workdir: str, abstract_state, keep: int):
  """Fails before training when the disk cannot hold the checkpoints to be kept."""
  if workdir_io.is_remote(workdir):
    return  # an object store (gs://) has no free-space figure to check against
  state_bytes = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                    for x in jax.tree.leaves(abstract_state))
  need = state_bytes * (keep + 1)  # kept checkpoints + the one being written
  free = shutil.disk_usage(workdir).free
  if free < need:
    raise UserInputError(
        f"workdir {workdir} has {free / 2**30:.2f} GiB free but {keep + 1} checkpoints of "
        f"this model need {need / 2**30:.2f} GiB; free space or lower "
        f"config.train.keep_checkpoints")


def save_vocab(workdir: str, vocab_path: str) -> str:
  """Copies the vocab into WORKDIR/vocab/ so the run is self-contained (fine-tune, export)."""
  dest = epath.Path(workdir) / "vocab" / epath.Path(vocab_path).name
  if jax.process_index() == 0 and not dest.exists():
    workdir_io.copy_atomic(vocab_path, dest)
  return os.fspath(dest)


def save_state(workdir: str, state: TrainState):
  """Writes `state` as WORKDIR/checkpoints/<step>/state, the layout train_and_evaluate
  resumes from (without a 'data' item: the input pipeline then starts at the beginning)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  manager = ocp.CheckpointManager(workdir_io.checkpoint_dir(workdir),
                                  item_handlers={"state": ocp.StandardCheckpointHandler()})
  manager.save(int(state.step), args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  manager.wait_until_finished()
  manager.close()


def restore_params(workdir: str, abstract_params) -> tuple[int, Any]:
  """(step, params as numpy) of WORKDIR's latest checkpoint, reading only the params.

  `abstract_params` is the expected params tree (ShapeDtypeStructs, e.g. from
  model.abstract_params); a sub-tree of the saved one is fine (partial restore).
  Raises UserInputError when there is no checkpoint or its tensors do not fit.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ckpt_dir = workdir_io.checkpoint_dir(workdir)
  listed = list(epath.Path(ckpt_dir).iterdir()) if epath.Path(ckpt_dir).is_dir() else []
  steps = [int(d.name) for d in listed if d.name.isdigit() and (d / "state").is_dir()]
  if not steps:
    raise UserInputError(f"no checkpoint in {ckpt_dir}; pretrain first (electra_jax.train "
                         f"writes checkpoints/<step>/)")
  step = max(steps)
  target = {"params": jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                   abstract_params)}
  try:
    restored = ocp.PyTreeCheckpointer().restore(
        os.fspath(epath.Path(ckpt_dir) / str(step) / "state"),
        args=ocp.args.PyTreeRestore(
            item=target, partial_restore=True,
            restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                      target)))
  except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
    raise UserInputError(
        f"checkpoint {step} in {ckpt_dir} does not match its config.json and vocab "
        f"({str(e).splitlines()[0][:200]})") from e
  params = restored["params"]
  for want, got in zip(jax.tree.leaves(target["params"]), jax.tree.leaves(params)):
    if tuple(want.shape) != tuple(np.shape(got)):
      raise UserInputError(
          f"checkpoint {step} in {ckpt_dir} holds a tensor of shape {np.shape(got)} where "
          f"its config.json and vocab give {want.shape}; the vocab does not match")
  return step, params
