"""Tokenized documents -> fixed-length ELECTRA pretraining examples.

This is the original ELECTRA `build_pretraining_dataset.py` algorithm, written
as a pure function of token ids and a numpy random Generator (no I/O, no
tokenizer), so it can be tested exhaustively and run in worker processes.

Per stream of documents (each a list of tokenized lines):

* Lines are appended to a "current chunk" until its token count reaches the
  target length; the end of a document flushes the chunk early.  The target is
  `max_seq_length`, except that after each example, with probability 5%, the
  next target is drawn uniformly from [5, max_seq_length].
* When the chunk is turned into an example, with probability 10% it becomes a
  single segment; otherwise segment A aims for (target - 3) // 2 tokens.  Lines
  go to A while A is empty or they fit below that aim; a line that would
  overflow A still goes to A with probability 1/2 while A is below the aim;
  from the first line that goes to B on, the rest of the chunk is B, the
  contiguous continuation of A (there is no next-sentence prediction).
* A is truncated to max_seq_length - 2 tokens and B to what is left after
  [CLS] A [SEP] and a final [SEP]; the truncated tail of the chunk is dropped.
* Layout: [CLS] A [SEP] (B [SEP]), padded to max_seq_length.  segment_ids are 0
  over [CLS] A [SEP] and 1 over B [SEP]; input_mask is 1 on every real token.

Two deliberate differences from the original code:

* Once a line has gone to B, every later line of the chunk goes to B too.  The
  original still let a short later line join A (A = lines 1 and 3, B = line 2),
  which reorders the text; here A and B are contiguous and in order, so an
  example is always a run of its document's tokens.
* A line longer than max_seq_length - 2 tokens (one that could never fit) is
  not truncated to one example.  The current chunk is flushed, each full
  max_seq_length - 2 token piece of the line becomes its own single-segment
  example, and the rest of the line continues as an ordinary line.  Such lines
  lose no tokens.

Random draws (the order matters for reproducibility, numpy Generator calls):
per example `random()` for the single-segment choice, `random()` for each 50%
overflow choice that is reached, then `random()` for the short-target choice and
`integers(5, max_seq_length + 1)` when it is taken.
"""

from typing import Iterable, Sequence

import numpy as np

# Probabilities of the original builder.
SINGLE_SEGMENT_PROB = 0.1
SHORT_TARGET_PROB = 0.05
MIN_SHORT_TARGET = 5
OVERFLOW_TO_A_PROB = 0.5

FEATURES = ("input_ids", "input_mask", "segment_ids")

Segments = tuple[list[int], list[int]]  # (A, B); B is empty for one segment.


class ExampleBuilder:
  """Turns a stream of tokenized lines and document ends into segment pairs.

  State (the current chunk and the target length) carries across documents,
  like the original builder over a whole file.  Use `add_line` for every line
  of a document and `end_document` after its last line; both return the
  examples completed by that call as (A, B) token lists, which `pack_examples`
  turns into arrays.
  """

  def __init__(self, max_seq_length: int, rng: np.random.Generator):
    """Creates a builder.

    Args:
      max_seq_length: length of every example, [CLS] and [SEP]s included.
      rng: the random Generator; all draws come from it, in a fixed order.
    """
    if max_seq_length < MIN_SHORT_TARGET:
      raise ValueError(f"max_seq_length must be >= {MIN_SHORT_TARGET}, "
                       f"got {max_seq_length}")
    self._max_len = max_seq_length
    self._rng = rng
    self._lines: list[Sequence[int]] = []
    self._length = 0
    self._target = max_seq_length
    self.long_lines = 0  # Lines that had to be split into pieces.

  @property
  def max_line_length(self) -> int:
    """Longest line kept whole; longer lines are split into pieces this long."""
    return self._max_len - 2

  def add_line(self, ids: Sequence[int]) -> list[Segments]:
    """Adds one tokenized line of the current document.

    Args:
      ids: the line's token ids (no special tokens).  Empty lines are ignored.

    Returns:
      The examples this line completed, as (A, B) token lists, in order.
    """
    if len(ids) == 0:  # pylint: disable=g-explicit-length-test
      return []
    out = []
    cap = self.max_line_length
    if len(ids) > cap:
      self.long_lines += 1
      out.extend(self.end_document())
      num_full = len(ids) // cap
      for k in range(num_full):
        self._lines = [ids[k * cap:(k + 1) * cap]]
        self._length = cap
        out.append(self._create_example())
      ids = ids[num_full * cap:]
      if len(ids) == 0:  # pylint: disable=g-explicit-length-test
        return out
    self._lines.append(ids)
    self._length += len(ids)
    if self._length >= self._target:
      out.append(self._create_example())
    return out

  def end_document(self) -> list[Segments]:
    """Flushes the current chunk (if any) at a document boundary."""
    if self._length == 0:
      return []
    return [self._create_example()]

  def _create_example(self) -> Segments:
    rng = self._rng
    if rng.random() < SINGLE_SEGMENT_PROB:
      first_target = 1 << 62  # Everything goes to A.
    else:
      first_target = (self._target - 3) // 2  # -3 for [CLS] and two [SEP]s.
    first: list[int] = []
    second: list[int] = []
    for line in self._lines:
      if not second and (
          not first or len(first) + len(line) < first_target or
          (len(first) < first_target and rng.random() < OVERFLOW_TO_A_PROB)):
        first.extend(line)
      else:
        second.extend(line)
    first = first[:self._max_len - 2]
    second = second[:max(0, self._max_len - len(first) - 3)]

    self._lines = []
    self._length = 0
    if rng.random() < SHORT_TARGET_PROB:
      self._target = int(rng.integers(MIN_SHORT_TARGET, self._max_len + 1))
    else:
      self._target = self._max_len
    return first, second


def pack_examples(segments: Sequence[Segments], max_seq_length: int, *,
                  cls_id: int, sep_id: int,
                  pad_id: int) -> dict[str, np.ndarray]:
  """Lays out (A, B) pairs as [CLS] A [SEP] (B [SEP]) arrays.

  Args:
    segments: (A, B) token lists with len(A) + len(B) + 2 + (1 if B) <=
      max_seq_length, as `ExampleBuilder` produces.
    max_seq_length: example length.
    cls_id: id of [CLS].
    sep_id: id of [SEP].
    pad_id: id of [PAD] (fills input_ids past the end).

  Returns:
    {'input_ids', 'input_mask', 'segment_ids'}: int32 arrays of shape
    [len(segments), max_seq_length].  input_mask and segment_ids are 0 on
    padding.
  """
  n = len(segments)
  lengths_a = np.empty(n, dtype=np.int64)  # len([CLS] A [SEP])
  lengths = np.empty(n, dtype=np.int64)  # Whole example.
  tokens: list[int] = []  # Every example's real tokens, back to back.
  for i, (a, b) in enumerate(segments):
    la = len(a) + 2
    total = la + (len(b) + 1 if b else 0)
    if total > max_seq_length:
      raise ValueError(f"example {i} has {total} tokens > max_seq_length "
                       f"{max_seq_length}")
    tokens.append(cls_id)
    tokens.extend(a)
    tokens.append(sep_id)
    if b:
      tokens.extend(b)
      tokens.append(sep_id)
    lengths_a[i] = la
    lengths[i] = total
  positions = np.arange(max_seq_length)[None, :]
  real = positions < lengths[:, None]
  input_ids = np.full((n, max_seq_length), pad_id, dtype=np.int32)
  input_ids[real] = tokens  # Row-major: each example's tokens, left-aligned.
  input_mask = real.astype(np.int32)
  segment_ids = ((positions >= lengths_a[:, None]) & real).astype(np.int32)
  return {"input_ids": input_ids, "input_mask": input_mask,
          "segment_ids": segment_ids}


def create_examples(documents: Iterable[Iterable[Sequence[int]]],
                    max_seq_length: int, *, cls_id: int, sep_id: int,
                    pad_id: int,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Builds packed examples from tokenized documents (see the module doc).

  Args:
    documents: each document is an iterable of tokenized lines (lists of ids,
      without special tokens).
    max_seq_length: example length.
    cls_id: id of [CLS].
    sep_id: id of [SEP].
    pad_id: id of [PAD].
    rng: numpy Generator; the same seed and input give the same examples.

  Returns:
    {'input_ids', 'input_mask', 'segment_ids'}: int32 [num_examples,
    max_seq_length], in document order.
  """
  builder = ExampleBuilder(max_seq_length, rng)
  segments: list[Segments] = []
  for doc in documents:
    for line in doc:
      segments.extend(builder.add_line(line))
    segments.extend(builder.end_document())
  return pack_examples(segments, max_seq_length, cls_id=cls_id,
                       sep_id=sep_id, pad_id=pad_id)
