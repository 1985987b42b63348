"""The dataset directory electra_jax.data.build writes, and how it gets there.

The builder assembles the dataset in a temporary directory beside the output; these
check the output path first (`check_output`), write the build's own metadata fields
(`metadata`) and the vocab copy (`add_vocab`), and swap the finished directory into
place in one rename (`replace_output`), so a failed build never leaves a directory
that looks complete.
"""

from typing import Any
import uuid

from etils import epath

from electra_jax import tokenization
from electra_jax.data import build_worker as worker_lib
from electra_jax.errors import UserInputError


def check_output(output: epath.Path, overwrite: bool) -> None:
  """Raises unless `output` may be (re)placed."""
  from electra_jax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  if not output.exists():
    return
  if not output.is_dir():
    raise UserInputError(f"--output_dir {output} exists and is not a "
                         f"directory; choose another path")
  if not any(True for _ in output.iterdir()):
    return  # An empty directory is fine.
  if not overwrite:
    raise UserInputError(f"--output_dir {output} already exists; pass "
                         f"--overwrite to replace it or choose another path")
  if not dataset_lib.is_built_dataset(output):
    raise UserInputError(
        f"refusing to --overwrite {output}: it is not a dataset built by "
        f"electra_jax.data.build; remove it yourself or choose another path")


def rmtree(path: epath.Path) -> None:
  """Removes `path` and everything under it, if it exists."""
  if path.exists():
    path.rmtree()


def metadata(tok: tokenization.Tokenizer, settings: worker_lib.WorkerSettings,
              unit_bytes: int) -> dict[str, Any]:
  """metadata.json, less the input description and the counts."""
  from electra_jax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  vocab_file = epath.Path(tok.path)
  return {
      "format": dataset_lib.FORMAT,
      "vocab_fingerprint": tok.fingerprint,
      "vocab_kind": tok.kind,
      "vocab_file": f"{dataset_lib.VOCAB_SUBDIR}/{vocab_file.name}",
      "vocab_size": int(tok.vocab_size),
      "vocab_source": str(vocab_file),
      "special_ids": {"pad": tok.pad_id, "unk": tok.unk_id, "cls": tok.cls_id,
                      "sep": tok.sep_id, "mask": tok.mask_id},
      "max_seq_length": settings.max_seq_length,
      "seed": settings.seed,
      "validation_fraction": settings.validation_fraction,
      "unit_bytes": int(unit_bytes),
  }


def add_vocab(tmp: epath.Path, tok: tokenization.Tokenizer) -> None:
  """Copies the vocab file into the dataset being built in `tmp`."""
  from electra_jax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  vocab_file = epath.Path(tok.path)
  version_dir = tmp / dataset_lib.DATASET_NAME / dataset_lib.VERSION
  vocab_dir = version_dir / dataset_lib.VOCAB_SUBDIR
  vocab_dir.mkdir()
  vocab_file.copy(vocab_dir / vocab_file.name)


def replace_output(tmp: epath.Path, output: epath.Path,
                    overwrite: bool) -> None:
  """Renames the finished `tmp` to `output` (replacing an old dataset)."""
  check_output(output, overwrite)
  old = None
  if output.exists():
    old = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
    output.rename(old)
  tmp.rename(output)
  if old is not None:
    rmtree(old)
