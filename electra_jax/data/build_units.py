"""Cuts the build's input into work units and reads a unit's text.

Text files are cut into byte ranges at blank lines (`plan_text_units`), a tfds
input into ranges of records (`plan_tfds_units`); `unit_texts` reads one unit
as its non-blank lines and the document each belongs to.  Used by
`electra_jax.data.build` (in its worker processes too); no global state.
"""

import collections
import dataclasses
import re
from typing import Any, Sequence

from etils import epath
import numpy as np

from electra_jax.errors import UserInputError

_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")


@dataclasses.dataclass(frozen=True)
class Unit:
  """A piece of input processed by one worker call."""
  index: int  # Global unit index: seeds the unit's RNG and its split hash.
  source: int  # Index of the input file (text) or 0 (tfds).
  path: str  # File path (text); unused for tfds.
  start: int  # Byte offset (text) or record index (tfds).
  end: int


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
  name: str  # Registered name (optionally name:version) or a directory.
  split: str
  data_dir: str | None
  text_key: str


def _find_cut(f, nominal: int, size: int, scan_limit: int) -> int:
  """A document boundary at or after byte `nominal` of an open binary file.

  Returns the offset just past the first blank line found at or after
  `nominal`; if none lies within `scan_limit` bytes, the start of the first line
  after `nominal` (the document is then split there); `size` if neither exists.
  """
  base = nominal - 1
  f.seek(base)
  buf = b""
  first_newline = None
  while True:
    block = f.read(1 << 20)
    if not block:
      break
    buf += block
    match = _BLANK_LINE.search(buf)
    if match:
      return base + match.end()
    if first_newline is None:
      i = buf.find(b"\n")
      if i >= 0:
        first_newline = base + i + 1
    if first_newline is not None and base + len(buf) - nominal > scan_limit:
      return first_newline
    j = buf.rfind(b"\n")
    if j >= 0:
      base += j
      buf = buf[j:]
    else:
      base += len(buf)
      buf = b""
  return first_newline if first_newline is not None else size


def plan_text_units(files: Sequence[epath.Path], unit_bytes: int):
  """Splits files into byte ranges; returns (units, sizes)."""
  units, sizes = [], []
  for source, path in enumerate(files):
    size = path.stat().length
    sizes.append(size)
    cuts = [0]
    if size > unit_bytes + unit_bytes // 2:
      with path.open("rb") as f:
        pos = 0
        while size - pos > unit_bytes + unit_bytes // 2:
          cut = _find_cut(f, pos + unit_bytes, size, unit_bytes)
          if cut >= size:
            break
          cuts.append(cut)
          pos = cut
    cuts.append(size)
    for start, end in zip(cuts[:-1], cuts[1:]):
      units.append(Unit(len(units), source, str(path), start, end))
  return units, sizes


def open_tfds_source(spec: TfdsSpec):
  """A random-access data source for the tfds input (ArrayRecord, no TF)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from electra_jax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  looks_like_path = "/" in spec.name or spec.name.startswith(".")
  try:
    if looks_like_path:
      version_dir = dataset_lib.find_version_dir(spec.name)
      if version_dir is None:
        raise UserInputError(
            f"--tfds={spec.name} is not a prepared tfds dataset directory (no "
            f"dataset_info.json in it or in a version dir below it)")
      builder = tfds.builder_from_directory(str(version_dir))
    else:
      builder = tfds.builder(spec.name, data_dir=spec.data_dir)
    if spec.split not in builder.info.splits:
      raise UserInputError(
          f"tfds dataset {spec.name} has no split {spec.split!r} (it has "
          f"{', '.join(sorted(builder.info.splits)) or 'none: not prepared'}); "
          f"pass --tfds_split")
    return builder.as_data_source(split=spec.split)
  except UserInputError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserInputError(
        f"cannot read tfds dataset {spec.name} split {spec.split} without "
        f"TensorFlow ({msg}); it must be prepared in array_record format "
        f"(pass --tfds_data_dir, or the dataset's directory as --tfds)"
    ) from None


def record_text(record: Any, key: str) -> Any:
  if not isinstance(record, dict) or key not in record:
    keys = ", ".join(sorted(record)) if isinstance(record, dict) else "?"
    raise UserInputError(f"tfds records have no field {key!r} (fields: "
                         f"{keys}); pass --tfds_text_key")
  value = record[key]
  if isinstance(value, np.ndarray) and value.shape == ():
    value = value.item()
  if not isinstance(value, (bytes, str)):
    raise UserInputError(f"tfds field {key!r} is not text (got "
                         f"{type(value).__name__}); pass --tfds_text_key")
  return value


def plan_tfds_units(spec: TfdsSpec, unit_bytes: int) -> tuple[list[Unit],
                                                               int]:
  """Splits the records into ranges of about unit_bytes of text."""
  source = open_tfds_source(spec)
  n = len(source)
  if n == 0:
    raise UserInputError(f"tfds dataset {spec.name} split {spec.split} is "
                         f"empty; nothing to build from")
  sample = [record_text(source[i], spec.text_key) for i in range(min(n, 64))]
  mean = max(1.0, sum(len(t) for t in sample) / len(sample))
  per_unit = max(1, int(unit_bytes / mean))
  units = [Unit(i, 0, spec.name, s, min(n, s + per_unit))
           for i, s in enumerate(range(0, n, per_unit))]
  return units, n


def _decode(raw: bytes) -> tuple[str, int]:
  try:
    return raw.decode("utf-8"), 0
  except UnicodeDecodeError:
    return raw.decode("utf-8", errors="replace"), 1


def _text_unit_lines(unit: Unit, stats: collections.Counter):
  """Yields the unit's lines (str) with '' marking document boundaries."""
  with epath.Path(unit.path).open("rb") as f:
    f.seek(unit.start)
    data = f.read(unit.end - unit.start)
  stats["bytes"] += len(data)
  try:
    lines = data.decode("utf-8").split("\n")
  except UnicodeDecodeError:
    lines = []
    for raw in data.split(b"\n"):
      line, bad = _decode(raw)
      stats["invalid_utf8_lines"] += bad
      lines.append(line)
  if unit.start == 0 and lines and lines[0].startswith("\ufeff"):
    lines[0] = lines[0][1:]  # Byte-order mark.
  return lines


def _tfds_unit_lines(unit: Unit, stats: collections.Counter, source: Any,
                     key: str):
  """The unit's lines (str) from tfds `source`, '' after each document."""
  lines = []
  for start in range(unit.start, unit.end, 256):
    indices = list(range(start, min(unit.end, start + 256)))
    if hasattr(source, "__getitems__"):
      records = source.__getitems__(indices)
    else:
      records = [source[i] for i in indices]
    for record in records:
      text = record_text(record, key)
      if isinstance(text, bytes):
        stats["bytes"] += len(text)
        text, bad = _decode(text)
        stats["invalid_utf8_lines"] += bad
      else:
        stats["bytes"] += len(text.encode("utf-8", errors="replace"))
      if not text.strip():
        stats["empty_records"] += 1
      # Each record is one document: blank lines inside it do not split it.
      lines.extend(line for line in text.split("\n") if line.strip())
      lines.append("")
  return lines


def unit_texts(unit: Unit, stats: collections.Counter,
               tfds_source: Any = None, text_key: str | None = None
              ) -> tuple[list[str], list[int]]:
  """The unit's non-blank lines (stripped) and the document of each.

  Text input when `tfds_source` is None; else the unit's records of that
  tfds data source (from `open_tfds_source`), their text in field `text_key`.
  """
  if tfds_source is None:
    raw_lines = _text_unit_lines(unit, stats)
  else:
    raw_lines = _tfds_unit_lines(unit, stats, tfds_source, text_key)
  texts, doc_of_text = [], []
  doc, in_doc = 0, False
  for line in raw_lines:
    line = line.strip()
    if not line:
      if in_doc:
        doc += 1
        in_doc = False
      continue
    texts.append(line)
    doc_of_text.append(doc)
    in_doc = True
  stats["documents"] = doc + int(in_doc)
  stats["lines"] = len(texts)
  return texts, doc_of_text
