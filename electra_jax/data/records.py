"""Serialized tf.train.Example records of integer features, numpy only.

tfds stores every example of an ArrayRecord dataset as a serialized
`tf.train.Example` proto.  Its own serializer builds one proto object per
example in Python (~50-100 us an example); `encode_examples` writes the same
bytes for a whole batch of examples at once with numpy (~3 us an example of
3 x 128 values), and `decode_examples` parses a batch back (~4 us an example,
where tfds' own parser takes ~50).

The bytes are those of protobuf's deterministic serialization (map keys in
sorted order; what `SerializeToString(deterministic=True)` gives).  tfds' plain
`SerializeToString()` writes the map entries in an order that changes from one
process to the next, so these records are the same content, parsed identically,
but byte-stable.

Wire layout of one record (every integer a varint; every tag and key byte is
below 128, so it is its own varint, which lets one vectorised varint encoder
write the whole record):

    Example     = 0x0a len(Features) Features
    Features    = for each key, sorted: 0x0a len(Entry) Entry
    Entry       = 0x0a len(key) key 0x12 len(Feature) Feature
    Feature     = 0x1a len(Int64List) Int64List
    Int64List   = 0x0a len(packed) packed      (packed: the values as varints)
"""

from typing import Mapping

import numpy as np

_MAX_VARINT_BYTES = 10
# Rows encoded per numpy pass (bounds the temporary arrays: ~8 bytes times
# rows times items per row).
_ROWS_PER_CHUNK = 2048


def varint_sizes(values: np.ndarray) -> np.ndarray:
  """Bytes taken by each uint64 value as a protobuf varint (1..10)."""
  values = np.asarray(values)
  if values.dtype.kind != "u":
    values = values.astype(np.uint64)
  sizes = np.ones(values.shape, np.int64)
  top = int(values.max()) if values.size else 0
  for k in range(1, _MAX_VARINT_BYTES):
    if top < 1 << (7 * k):
      break
    sizes += values >= (1 << (7 * k))
  return sizes


def _varint_bytes(items: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
  """Varint bytes of a uint64 [n, k] matrix, padded to the longest varint.

  Returns:
    (data, keep): uint8 [n, k * m] (m = the longest varint in `items`; value j
    of row i takes bytes [j * m, j * m + its size)) and bool [n, k * m] marking
    the bytes that belong to the varints (None when all of them do).
  """
  n, k = items.shape
  top = int(items.max(initial=0))
  if top < 0x80:
    return items.astype(np.uint8), None
  # Narrower arithmetic is faster.
  items = items.astype(np.uint32 if top < 1 << 32 else np.uint64, copy=False)
  m = int(varint_sizes(np.asarray(top, np.uint64)))
  data, keep = [], []
  for j in range(m):
    rest = items >> (7 * j) if j else items
    more = rest >= 0x80
    data.append(((rest & 0x7f) | (more.astype(rest.dtype) << 7)).astype(
        np.uint8))
    keep.append(rest > 0 if j else np.ones(rest.shape, bool))
  return (np.stack(data, axis=2).reshape(n, k * m),
          np.stack(keep, axis=2).reshape(n, k * m))


def encode_varints(blocks) -> tuple[np.ndarray, np.ndarray]:
  """Varint-encodes rows of uint64 [n, k_b] blocks, each row one byte string.

  Row i is the varints of row i of every block, in block order.

  Returns:
    (data, offsets): uint8 [total] bytes of all rows back to back, and int64
    [n + 1] offsets, row i being data[offsets[i]:offsets[i + 1]].
  """
  parts = [_varint_bytes(np.asarray(b)) for b in blocks]
  data = np.concatenate([d for d, _ in parts], axis=1)
  keep = np.concatenate(
      [k if k is not None else np.ones(d.shape, bool) for d, k in parts],
      axis=1)
  offsets = np.zeros(len(data) + 1, np.int64)
  np.cumsum(keep.sum(axis=1), out=offsets[1:])
  return data[keep], offsets


def _unsigned(values: np.ndarray) -> np.ndarray:
  """The values as protobuf writes int64s: unsigned, negatives as 2**64 + v."""
  if values.dtype.kind == "u":
    return values
  if values.size and values.min() < 0:
    return values.astype(np.int64).view(np.uint64)
  return values.view(values.dtype.str.replace("i", "u"))


def _field(size: np.ndarray) -> np.ndarray:
  """Bytes of a length-delimited field: tag, varint length, payload."""
  return 1 + varint_sizes(size) + size


def _encode_chunk(features: Mapping[str, np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray]:
  n = len(next(iter(features.values())))
  blocks, entry_sizes = [], []
  for name in sorted(features):
    values = _unsigned(np.asarray(features[name]))
    key = list(name.encode("ascii"))
    packed = varint_sizes(values).sum(axis=1)
    int64_list = _field(packed)
    feature = _field(int64_list)
    entry = _field(np.int64(len(key))) + _field(feature)
    entry_sizes.append(entry)
    # 0x0a entry 0x0a len(key) key 0x12 feature 0x1a int64_list 0x0a packed
    template = [0x0a, 0, 0x0a, len(key)] + key + [0x12, 0, 0x1a, 0, 0x0a, 0]
    head = np.empty((n, len(template)), np.uint64)
    head[:] = np.array(template, np.uint64)
    head[:, 1] = entry
    head[:, -5] = feature
    head[:, -3] = int64_list
    head[:, -1] = packed
    blocks += [head, values]
  features_size = sum(_field(e) for e in entry_sizes)
  blocks.insert(0, np.stack([np.full(n, 0x0a), features_size],
                            axis=1).astype(np.uint64))
  return encode_varints(blocks)


def encode_examples(features: Mapping[str, np.ndarray]
                   ) -> tuple[bytes, np.ndarray]:
  """Serializes examples of integer features as tf.train.Example records.

  Args:
    features: name (ASCII) -> integer array [n, length] (length >= 1; the
      lengths may differ between features).  Row i of every array is example i.
      Values are stored as int64 (negative ones take 10 bytes, as in protobuf).

  Returns:
    (data, offsets): the n serialized records back to back, and int64 [n + 1]
    offsets (record i is data[offsets[i]:offsets[i + 1]]).  Each record parses
    as the tf.train.Example tfds writes for a FeaturesDict of int Tensors.

  Raises:
    ValueError: no features, arrays that are not [n, length >= 1] with one n,
      or a non-integer array.
  """
  if not features:
    raise ValueError("no features to encode")
  shapes = {k: np.shape(v) for k, v in features.items()}
  rows = {s[0] for s in shapes.values() if len(s) == 2}
  if (len(rows) != 1 or any(len(s) != 2 or s[1] < 1
                            for s in shapes.values())):
    raise ValueError(f"features must be [n, length >= 1] arrays with the "
                     f"same n; got shapes {shapes}")
  for name, v in features.items():
    if not np.issubdtype(np.asarray(v).dtype, np.integer):
      raise ValueError(f"feature {name!r} is not an integer array")
  n = rows.pop()
  datas, offsets, base = [], [np.zeros(1, np.int64)], 0
  for start in range(0, n, _ROWS_PER_CHUNK):
    chunk = {k: np.asarray(v)[start:start + _ROWS_PER_CHUNK]
             for k, v in features.items()}
    data, offs = _encode_chunk(chunk)
    datas.append(data)
    offsets.append(offs[1:] + base)
    base += len(data)
  return b"".join(d.tobytes() for d in datas), np.concatenate(offsets)


def decode_varints(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Splits uint8 bytes into varints.

  Returns:
    (values, ends): uint64 value of every varint, and the index in `data` of
    each one's last byte.

  Raises:
    ValueError: the bytes do not end with a complete varint.
  """
  data = np.asarray(data, np.uint8)
  ends = np.flatnonzero(data < 0x80)
  if len(data) and (not len(ends) or ends[-1] != len(data) - 1):
    raise ValueError("truncated varint")
  starts = np.empty_like(ends)
  starts[:1] = 0
  starts[1:] = ends[:-1] + 1
  values = (data[ends] & 0x7f).astype(np.uint64)
  if len(ends) == len(data):  # All one byte (e.g. masks): nothing to add.
    return values, ends
  sizes = ends - starts + 1
  if sizes.max() > _MAX_VARINT_BYTES:
    raise ValueError("varint longer than 10 bytes")
  # The last byte is the most significant: add the earlier ones below it.
  for k in range(1, int(sizes.max())):
    sel = np.flatnonzero(sizes > k)
    values[sel] = (values[sel] << np.uint64(7)) | (
        data[ends[sel] - k] & 0x7f).astype(np.uint64)
  return values, ends


def decode_examples(records, names, length: int) -> dict[str, np.ndarray]:
  """Parses records written by `encode_examples` (or by tfds) back to arrays.

  Handles exactly the layout of tf.train.Examples holding one Int64List of
  `length` values per name in `names` (map entries in any order, e.g. tfds'
  own), each name ASCII and without other features.

  Args:
    records: serialized tf.train.Examples (a sequence of bytes).
    names: the feature names every record holds.
    length: the number of values of every feature.

  Returns:
    name -> int32 [len(records), length].

  Raises:
    ValueError: a record does not have that layout (parse it some other way).
  """
  n = len(records)
  keys = [list(name.encode("ascii")) for name in names]
  per_entry = [10 + len(k) + length for k in keys]
  count = 2 + sum(per_entry)  # Varints per record.
  data = np.frombuffer(b"".join(records), np.uint8)
  values, ends = decode_varints(data)
  if len(values) != n * count:
    raise ValueError("records are not Examples of the expected features")
  bounds = np.cumsum([len(r) for r in records])
  if n and not np.array_equal(ends[count - 1::count] + 1, bounds):
    raise ValueError("records are not Examples of the expected features")
  table = values.reshape(n, count)
  every = np.arange(n)
  out = {name: np.zeros((n, length), np.int32) for name in names}
  found = np.zeros((n, len(names)), np.int64)
  ok = table[:, 0] == 0x0a
  pos = np.full(n, 2)  # Column of each record's current map entry.
  for _ in names:
    key_len = table[every, np.minimum(pos + 3, count - 1)].astype(np.int64)
    for offset, tag in ((0, 0x0a), (2, 0x0a)):
      ok &= table[every, np.minimum(pos + offset, count - 1)] == tag
    for offset, tag in ((4, 0x12), (6, 0x1a), (8, 0x0a)):
      ok &= table[every, np.minimum(pos + key_len + offset, count - 1)] == tag
    for j, (name, key) in enumerate(zip(names, keys)):
      match = ok & (key_len == len(key)) & (pos + 10 + len(key) + length <=
                                            count)
      if not match.any():
        continue
      rows = every[match][:, None]
      key_cols = pos[match][:, None] + 4 + np.arange(len(key))
      match[match] = (table[rows, key_cols] == np.array(key, np.uint64)).all(
          axis=1)
      rows = every[match][:, None]
      value_cols = pos[match][:, None] + 10 + len(key) + np.arange(length)
      out[name][match] = table[rows, value_cols].view(np.int64)
      found[match, j] += 1
    pos = np.minimum(pos + 10 + key_len + length, count)
  if not (ok.all() and (found == 1).all() and (pos == count).all()):
    raise ValueError("records are not Examples of the expected features")
  return out
