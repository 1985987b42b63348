"""The on-disk pretraining dataset: a tfds ArrayRecord dataset, read without TF.

`python -m electra_jax.data.build --output_dir=DIR ...` writes

    DIR/electra_pretraining/1.0.0/
      dataset_info.json, features.json      tfds' own description
      metadata.json                         build settings and counts (below)
      electra_pretraining-{train,validation}.array_record-NNNNN-of-NNNNN
      vocab/<vocab file>                    a copy of the vocab used

Every record is {'input_ids', 'input_mask', 'segment_ids'}: int32 arrays of
shape [max_seq_length] (see `electra_jax.data.examples` for the layout).
Records are stored in input order (no shuffling on disk): shuffle when reading.

`open_dataset(DIR)` gives random-access data sources (len(), [i], what grain
reads) plus the metadata; `check_compatible` compares them with a model config.
Only the ArrayRecord path of tensorflow_datasets is used, so TensorFlow is never
imported.
"""

import dataclasses
import json
from typing import Any, Callable, Mapping, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from electra_jax.data import records as records_lib
from electra_jax.errors import UserInputError

DATASET_NAME = "electra_pretraining"
VERSION = "1.0.0"
FEATURES = ("input_ids", "input_mask", "segment_ids")
FORMAT = "electra_jax.pretraining.v1"  # metadata["format"]
VOCAB_SUBDIR = "vocab"

_BUILD_HINT = ("build one with `python -m electra_jax.data.build --input=GLOB "
               "--vocab=PATH --output_dir=DIR`")


def features(max_seq_length: int) -> tfds.features.FeaturesDict:
  """The tfds features of one example."""
  return tfds.features.FeaturesDict({
      name: tfds.features.Tensor(shape=(max_seq_length,), dtype=np.int32)
      for name in FEATURES
  })


class _LocalDatasetInfo(tfds.core.DatasetInfo):
  """tfds.core.DatasetInfo for a dataset that exists only where `data.build` wrote it.

  tfds' builder, finding no dataset_info.json yet, asks Google's public bucket for
  precomputed info under the dataset's name, first making a temporary directory that
  it never removes: every build left an empty /tmp/tmp*tfds behind, and on a Cloud VM
  the lookup goes over the network.  Our datasets are never in that bucket.
  """

  def initialize_from_bucket(self) -> None:
    return None


class ElectraPretraining(tfds.core.GeneratorBasedBuilder):
  """Describes the dataset to tfds; the shards are written by `data.build`.

  `download_and_prepare()` calls `write_splits(template_fn)`, which writes
  every split's shards at `template_fn(split name).sharded_filepath(...)`
  (ArrayRecord files of serialized tf.train.Examples, as tfds' own writer
  makes) and returns their `tfds.core.SplitInfo`s, train first.  tfds then
  writes dataset_info.json, features.json and metadata.json (`metadata`) beside
  them.
  """

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {
      str(VERSION): "ELECTRA pretraining examples (original layout).",
  }

  def __init__(self, *, max_seq_length: int, metadata: Mapping[str, Any],
               write_splits: Callable[[Callable[[str], Any]],
                                      Sequence[tfds.core.SplitInfo]],
               **kwargs):
    self._max_seq_length = max_seq_length
    self._metadata_init = dict(metadata)
    self._write_splits = write_splits
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # Only used to find a checksums file for downloads, and there are none.
    # tfds' own lookup fails for editable installs when the importlib_resources
    # backport is missing.
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    return _LocalDatasetInfo(
        builder=self,
        description=(
            "ELECTRA pretraining examples: [CLS] A [SEP] (B [SEP]) token "
            "ids with input_mask and segment_ids, built by "
            "electra_jax.data.build."),
        features=features(self._max_seq_length),
        metadata=tfds.core.MetadataDict(self._metadata_init),
        disable_shuffling=True,
        citation=(
            "@inproceedings{clark2020electra, title={ELECTRA: Pre-training "
            "Text Encoders as Discriminators Rather Than Generators}, "
            "author={Kevin Clark and Minh-Thang Luong and Quoc V. Le and "
            "Christopher D. Manning}, booktitle={ICLR}, year={2020}}"),
    )

  def _download_and_prepare(self, dl_manager, download_config):
    # Replaces tfds' generate-serialize-write loop (~100 us an example in one
    # process): the shards are already serialized and are written in parallel.
    del dl_manager, download_config  # Nothing to download.
    split_infos = self._write_splits(self._get_filename_template)
    self.info.set_splits(tfds.core.SplitDict(list(split_infos)))

  def _split_generators(self, dl_manager):
    raise NotImplementedError("the splits come from write_splits")

  def _generate_examples(self):
    raise NotImplementedError("the splits come from write_splits")


class ExampleSource:
  """One split of a built dataset, for random access.

  `len(source)`, `source[i]` and `source.__getitems__(indices)` (dicts of int32
  arrays of shape [max_seq_length]) as tfds' ArrayRecordDataSource gives them,
  and `source.read_batch(indices)`: the examples stacked, int32 arrays [len,
  max_seq_length], read in one call and parsed in one vectorised pass
  (`records.decode_examples`: ~4 us an example where tfds' decoding takes ~50,
  and reading one record at a time ~60-150).  Records of another layout fall
  back to tfds' decoding.
  """

  def __init__(self, tfds_source: Any, max_seq_length: int):
    self._tfds = tfds_source
    self._max_seq_length = max_seq_length

  def __len__(self) -> int:
    return len(self._tfds)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return self._tfds[i]

  def __getitems__(self, indices: Sequence[int]
                  ) -> list[dict[str, np.ndarray]]:
    batch = self.read_batch(indices)
    return [{k: v[i] for k, v in batch.items()} for i in range(len(indices))]

  def read_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """Examples `indices`, stacked: name -> int32 [len(indices), L]."""
    indices = [int(i) for i in indices]
    raw = getattr(self._tfds, "data_source", None)
    if raw is not None and indices:
      records = raw.__getitems__(indices)
      if len(records) != len(indices):
        raise IndexError(f"asked for {len(indices)} records, got "
                         f"{len(records)}")
      try:
        return records_lib.decode_examples(records, FEATURES,
                                           self._max_seq_length)
      except ValueError:
        pass  # Not the layout `data.build` writes: let tfds decode it.
    if not indices:
      return {k: np.zeros((0, self._max_seq_length), np.int32)
              for k in FEATURES}
    rows = self._tfds.__getitems__(indices)
    return {k: np.stack([np.asarray(r[k]) for r in rows]).astype(np.int32)
            for k in FEATURES}

  def __repr__(self) -> str:
    return f"ExampleSource({self._tfds!r})"


@dataclasses.dataclass(frozen=True)
class BuiltDataset:
  """A built pretraining dataset opened for random access.

  Attributes:
    path: the tfds version directory (.../electra_pretraining/1.0.0).
    sources: split name ('train', 'validation') -> `ExampleSource`: len(source),
      source[i] / source.__getitems__(indices) give dicts of int32 numpy
      arrays of shape [max_seq_length]; source.read_batch(indices) stacks
      them ([len(indices), max_seq_length]).
    metadata: the build settings and counts (metadata.json).
    vocab_path: the copy of the vocab file stored with the dataset.
    max_seq_length: example length.
    vocab_fingerprint: 16 hex chars of sha256 of the vocab file.
  """
  path: str
  sources: dict[str, Any]
  metadata: dict[str, Any]
  vocab_path: str
  max_seq_length: int
  vocab_fingerprint: str

  @property
  def num_examples(self) -> dict[str, int]:
    """Split name -> number of examples."""
    return {name: len(src) for name, src in self.sources.items()}


def _version_key(name: str):
  try:
    return tuple(int(p) for p in name.split("."))
  except ValueError:
    return None


def find_version_dir(path: epath.PathLike) -> epath.Path | None:
  """The tfds version dir at or below `path` (highest version), else None.

  Accepts the version dir itself, a dataset dir holding version dirs, or a
  data dir holding `electra_pretraining/<version>`.
  """
  path = epath.Path(path)
  if (path / "dataset_info.json").exists():
    return path
  for parent in (path / DATASET_NAME, path):
    if not parent.is_dir():
      continue
    versions = []
    for child in parent.iterdir():
      key = _version_key(child.name)
      if key is not None and (child / "dataset_info.json").exists():
        versions.append((key, child))
    if versions:
      return max(versions)[1]
  return None


def _read_metadata(version_dir: epath.Path) -> dict[str, Any] | None:
  """metadata.json if it is ours, else None."""
  try:
    metadata = json.loads((version_dir / "metadata.json").read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return None
  if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
    return None
  return metadata


def is_built_dataset(path: epath.PathLike) -> bool:
  """Whether `path` holds a dataset written by `electra_jax.data.build`."""
  version_dir = find_version_dir(path)
  return version_dir is not None and _read_metadata(version_dir) is not None


def open_dataset(dataset_dir: epath.PathLike) -> BuiltDataset:
  """Opens a dataset written by `electra_jax.data.build` for random access.

  Args:
    dataset_dir: the builder's --output_dir (or the version dir inside it).

  Returns:
    A `BuiltDataset`.

  Raises:
    UserInputError: the directory does not exist or holds no dataset built by
      `electra_jax.data.build`.
  """
  root = epath.Path(dataset_dir)
  if not root.exists():
    raise UserInputError(f"dataset dir {dataset_dir} does not exist; "
                         f"{_BUILD_HINT}")
  version_dir = find_version_dir(root)
  if version_dir is None:
    raise UserInputError(
        f"{dataset_dir} holds no built pretraining dataset (no "
        f"{DATASET_NAME}/<version>/dataset_info.json); pass the --output_dir "
        f"of electra_jax.data.build, or {_BUILD_HINT}")
  metadata = _read_metadata(version_dir)
  if metadata is None:
    raise UserInputError(
        f"{version_dir} is a tfds dataset but was not built by "
        f"electra_jax.data.build (metadata.json lacks format={FORMAT!r}); "
        f"{_BUILD_HINT}")
  vocab_path = version_dir / metadata["vocab_file"]
  builder = tfds.builder_from_directory(str(version_dir))
  max_seq_length = int(metadata["max_seq_length"])
  sources = {name: ExampleSource(source, max_seq_length)
             for name, source in builder.as_data_source().items()}
  return BuiltDataset(
      path=str(version_dir),
      sources=sources,
      metadata=metadata,
      vocab_path=str(vocab_path),
      max_seq_length=max_seq_length,
      vocab_fingerprint=str(metadata["vocab_fingerprint"]),
  )


def check_compatible(built: BuiltDataset, *, vocab_fingerprint: str | None,
                     max_seq_length: int) -> None:
  """Raises UserInputError if the dataset does not fit the model's settings.

  Args:
    built: the opened dataset.
    vocab_fingerprint: the fingerprint of the vocab the model uses, or None to
      skip the vocab check (e.g. the model takes the dataset's vocab).
    max_seq_length: the sequence length the model is configured for.
  """
  if vocab_fingerprint is not None and vocab_fingerprint != (
      built.vocab_fingerprint):
    raise UserInputError(
        f"dataset {built.path} was built with vocab fingerprint "
        f"{built.vocab_fingerprint} ({built.metadata.get('vocab_file')}) but "
        f"the config's vocab has fingerprint {vocab_fingerprint}; rebuild the "
        f"dataset with --vocab=<the config's vocab>, or point the config at "
        f"the dataset's vocab {built.vocab_path}")
  if int(max_seq_length) != built.max_seq_length:
    raise UserInputError(
        f"dataset {built.path} has max_seq_length {built.max_seq_length} but "
        f"the config asks for {max_seq_length}; rebuild the dataset with "
        f"--max_seq_length={max_seq_length}, or set the config's "
        f"max_seq_length to {built.max_seq_length}")
