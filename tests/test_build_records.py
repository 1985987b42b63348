"""The built dataset's files: ArrayRecord shards as tfds writes them, batch reading,
and tfds datasets as builder input."""

import os

from array_record.python import array_record_module
import numpy as np
import pytest
import tensorflow_datasets as tfds

from electra_jax.data import build
from electra_jax.data import build_shards
from electra_jax.data import dataset
from electra_jax.data import records
from electra_jax.errors import UserInputError

from build_helpers import (MAX_LEN, all_examples, assert_tensorflow_never_imported, build_at,
                           built, corpus, make_docs, record_files, write_vocab)  # noqa: F401 (fixtures)


@pytest.mark.parametrize("workers", [0, 2])
def test_several_shards_read_back_in_order(built, corpus, tmp_path,
                                           monkeypatch, workers):
  # tfds only shards splits of 128 MiB or more; force 3 shards (at most one
  # per example).
  monkeypatch.setattr(build_shards, "_num_shards",
                      lambda num_bytes, n: min(3, n))
  out = tmp_path / "sharded"
  build_at(corpus, out, num_workers=workers)
  other = dataset.open_dataset(str(out))
  assert other.metadata == built.metadata
  for split in ("train", "validation"):
    names = sorted(n for n in record_files(other) if f"-{split}." in n)
    assert [n[-len("00000-of-00003"):] for n in names] == [
        f"0000{i}-of-00003" for i in range(3)]
    info = tfds.builder_from_directory(other.path).info.splits[split]
    lengths = [array_record_module.ArrayRecordReader(
        os.path.join(other.path, n)).num_records() for n in names]
    assert lengths == list(info.shard_lengths)
    assert sum(lengths) == len(built.sources[split])
    assert max(lengths) - min(lengths) <= 1  # tfds' even boundaries.
    a = all_examples(built.sources[split])
    b = all_examples(other.sources[split])
    for k in dataset.FEATURES:
      np.testing.assert_array_equal(a[k], b[k])
  # Same bytes with and without worker processes.
  if workers:
    build_at(corpus, tmp_path / "sharded0", num_workers=0)
    same = dataset.open_dataset(str(tmp_path / "sharded0"))
    assert record_files(same) == record_files(other)


def test_records_are_what_tfds_writes():
  from tensorflow_datasets.core import example_serializer  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(5)
  for length, low, high in ((8, 0, 200), (128, 0, 30522), (40, -3, 2**31 - 1)):
    features = dataset.features(length)
    serializer = example_serializer.ExampleSerializer(
        features.get_serialized_info())
    ex = {k: rng.integers(low, high, (300, length)).astype(np.int32)
          for k in dataset.FEATURES}
    ex["input_ids"][0, :] = 2**31 - 1  # The longest non-negative varints.
    data, offsets = records.encode_examples(ex)
    assert offsets[0] == 0 and offsets[-1] == len(data)
    ours = [data[offsets[i]:offsets[i + 1]] for i in range(300)]
    theirs = []
    for i in range(300):
      proto = serializer.get_tf_example(
          features.encode_example({k: v[i] for k, v in ex.items()}))
      assert ours[i] == proto.SerializeToString(deterministic=True), i
      theirs.append(proto.SerializeToString())  # Some map order.
    for recs in (ours, theirs):
      back = records.decode_examples(recs, dataset.FEATURES, length)
      for k in dataset.FEATURES:
        np.testing.assert_array_equal(back[k], ex[k])
  # Anything else is refused, so readers can fall back to tfds' parser.
  with pytest.raises(ValueError):
    records.decode_examples(ours, dataset.FEATURES, length + 1)
  with pytest.raises(ValueError):
    records.decode_examples([ours[0][:-1]], dataset.FEATURES, length)
  with pytest.raises(ValueError):
    records.decode_examples([b"\x0a\x02\x08\x01"], dataset.FEATURES, 8)
  with pytest.raises(ValueError):
    records.encode_examples({"x": np.zeros((2, 0), np.int32)})


class NotExamples:
  """Raw records that are not tf.train.Examples."""

  def __getitems__(self, indices):
    return [b"not a record"] * len(indices)


class FakeTfdsSource:
  """A tfds-like data source: decoded rows, and raw records (`data_source`)."""

  def __init__(self, rows):
    self.rows = rows
    self.data_source = NotExamples()

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, i):
    return self.rows[i]

  def __getitems__(self, indices):
    return [self.rows[i] for i in indices]


def test_example_source_reads_batches(built):
  source = built.sources["train"]
  indices = [5, 0, 5, len(source) - 1, 17]
  batch = source.read_batch(indices)
  for k in dataset.FEATURES:
    assert batch[k].dtype == np.int32
    assert batch[k].shape == (len(indices), MAX_LEN)
  for row, i in enumerate(indices):
    one = source[i]  # tfds' own decoding.
    for k in dataset.FEATURES:
      np.testing.assert_array_equal(batch[k][row], one[k])
  assert source.read_batch([])["input_ids"].shape == (0, MAX_LEN)
  # Records of another layout: tfds decodes them.
  rows = [{k: np.full(MAX_LEN, i, np.int32) for k in dataset.FEATURES}
          for i in range(4)]
  fake = dataset.ExampleSource(FakeTfdsSource(rows), MAX_LEN)
  batch = fake.read_batch([3, 1])
  np.testing.assert_array_equal(batch["segment_ids"][:, 0], [3, 1])


class TinyText(tfds.core.GeneratorBasedBuilder):
  """A tiny tfds text dataset, written as array_record by the test."""

  VERSION = tfds.core.Version("1.0.0")
  docs = []

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({"body": tfds.features.Text()}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, text in enumerate(self.docs):
      yield i, {"body": text}


def test_tfds_input(tmp_path, tempdir):  # tempdir: its tfds builder's leftover
  vocab = write_vocab(tmp_path / "vocab.txt")
  docs = make_docs(np.random.default_rng(4), 0, 12)
  TinyText.docs = ["\n".join(lines) for lines in docs] + ["", "d12 one\n\nd12"]
  builder = TinyText(data_dir=str(tmp_path / "tfds"),
                     file_format="array_record")
  builder.download_and_prepare()
  for name, kw in ((builder.data_dir, {}),
                   ("tiny_text", {"tfds_data_dir": str(tmp_path / "tfds")})):
    out = tmp_path / f"out{len(kw)}"
    build.build_dataset(None, vocab, str(out), max_seq_length=MAX_LEN,
                        num_workers=0, tfds_name=name, tfds_text_key="body",
                        **kw)
    ds = dataset.open_dataset(str(out))
    counts = ds.metadata["counts"]
    assert counts["records"] == 14 and counts["empty_records"] == 1
    assert counts["documents"] == 13  # A record is one document.
    assert counts["lines"] == sum(len(d) for d in docs) + 2
    assert sum(len(s) for s in ds.sources.values()) == sum(
        counts["examples"].values())
  with pytest.raises(UserInputError, match="no field 'text'.*body"):
    build.build_dataset(None, vocab, str(tmp_path / "bad"),
                        tfds_name=builder.data_dir, num_workers=0)
  with pytest.raises(UserInputError, match="not built by"):
    dataset.open_dataset(builder.data_dir)  # A tfds dataset, but not ours.
  with pytest.raises(UserInputError, match="no split 'test'"):
    build.build_dataset(None, vocab, str(tmp_path / "bad"),
                        tfds_name=builder.data_dir, tfds_split="test",
                        tfds_text_key="body", num_workers=0)


def test_tensorflow_is_never_imported(built):
  assert len(built.sources["train"]) > 0
  assert_tensorflow_never_imported()
