"""Reading TSV task files: rows of the right width, columns, label sets.

Files are UTF-8, tab-separated and read with `csv.QUOTE_NONE` (GLUE text
contains quote characters that are part of the text).  Blank lines are
ignored; rows whose column count is wrong are skipped, counted and logged, and
a file with more bad rows than good is a UserInputError.
"""

import csv
import dataclasses
from typing import Sequence

from absl import logging
from etils import epath

from electra_jax.errors import UserInputError

# A column reference: a header name, or a 0-based position.
Column = str | int


@dataclasses.dataclass
class Table:
  """A TSV file's header (None if it has none) and its well-formed rows."""
  path: str
  header: list[str] | None
  rows: list[list[str]]
  line_numbers: list[int]
  skipped_lines: list[int]


def _missing_file_error(path, layout: str) -> UserInputError:
  hint = f"; expected {layout}" if layout else ""
  return UserInputError(f"task file {path} not found{hint}")


def read_table(path: str, has_header: bool, layout: str = "",
               expected_columns: int | None = None,
               min_columns: int = 1) -> Table:
  """Reads a TSV file, skipping (and counting) rows of the wrong width.

  `layout` describes the expected files; error messages quote it.
  """
  p = epath.Path(path)
  if not p.exists():
    raise _missing_file_error(path, layout)
  if p.is_dir():
    raise UserInputError(f"task file {path} is a directory, expected a TSV "
                         f"file")
  header = None
  rows, line_numbers, skipped = [], [], []
  try:
    with p.open("r", encoding="utf-8-sig") as f:
      reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
      for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
          continue  # Blank line.
        if has_header and header is None:
          header = [c.strip() for c in row]
          expected_columns = len(header)
          continue
        if expected_columns is not None:
          ok = len(row) == expected_columns
        else:
          ok = len(row) >= min_columns
        if ok:
          rows.append(row)
          line_numbers.append(line)
        else:
          skipped.append(line)
  except UnicodeDecodeError:
    raise UserInputError(f"task file {path} is not UTF-8 text; save it as "
                         f"UTF-8") from None
  except csv.Error as e:
    raise UserInputError(f"task file {path} line {reader.line_num}: {e}"
                         ) from None
  if has_header and header is None:
    raise UserInputError(f"task file {path} is empty; expected a header row "
                         f"and data rows"
                         + (f" ({layout})" if layout else ""))
  if not rows:
    raise UserInputError(
        f"task file {path} has no usable data rows ({len(skipped)} with the "
        f"wrong number of columns)"
        + (f"; expected {layout}" if layout else ""))
  if len(skipped) > len(rows):
    want = (f"{expected_columns} columns" if expected_columns is not None else
            f"at least {min_columns} columns")
    raise UserInputError(
        f"task file {path}: {len(skipped)} of {len(skipped) + len(rows)} rows "
        f"do not have {want} (first at line {skipped[0]}); the file is not in "
        f"the expected layout"
        + (f": {layout}" if layout else ""))
  if skipped:
    logging.warning("%s: skipped %d malformed row(s) with the wrong number "
                    "of columns (lines %s%s)", path, len(skipped),
                    ", ".join(map(str, skipped[:10])),
                    ", ..." if len(skipped) > 10 else "")
  return Table(str(path), header, rows, line_numbers, skipped)


def column_index(col: Column, names: Sequence[str] | None, path: str,
                 what: str, layout: str = "") -> int:
  """The 0-based position of column `col` (a position, or a header name)."""
  if isinstance(col, int):
    return col
  if names is None:
    raise UserInputError(
        f"task file {path} has no header row, so the {what} column {col!r} "
        f"cannot be found by name; give the column as a 0-based position")
  if col not in names:
    hint = f"; expected {layout}" if layout else ""
    raise UserInputError(
        f"task file {path} has no {what} column {col!r} (its columns are "
        f"{', '.join(names)}){hint}")
  return list(names).index(col)


def _is_number(s: str) -> bool:
  try:
    float(s)
  except ValueError:
    return False
  return True


def sorted_labels(labels) -> tuple[str, ...]:
  """The distinct labels, in numeric order when they are all numbers."""
  uniq = set(labels)
  if all(_is_number(l) for l in uniq):
    return tuple(sorted(uniq, key=lambda s: (float(s), s)))
  return tuple(sorted(uniq))
