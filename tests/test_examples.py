"""Tests for electra_jax.data.examples: the original ELECTRA semantics."""

import numpy as np
import pytest

from electra_jax.data import examples

CLS, SEP, PAD = 101, 102, 7  # PAD != 0 so padding bugs show.
IDS = dict(cls_id=CLS, sep_id=SEP, pad_id=PAD)


class ScriptedRng:
  """Stands in for np.random.Generator: random() returns scripted values."""

  def __init__(self, values, default=0.99, integers=None):
    self.values = list(values)
    self.default = default
    self.integers_values = list(integers or [])
    self.calls = 0

  def random(self):
    self.calls += 1
    return self.values.pop(0) if self.values else self.default

  def integers(self, low, high):
    v = self.integers_values.pop(0)
    assert low <= v < high
    return v


def seq(start, n):
  """n distinct content ids from `start` (never special ids)."""
  return list(range(1000 + start, 1000 + start + n))


def decode(row_ids, row_mask, row_seg):
  """Splits one packed example into (A, B) and checks the layout."""
  n = int(row_mask.sum())
  assert (row_mask[:n] == 1).all() and (row_mask[n:] == 0).all()
  assert (row_ids[n:] == PAD).all() and (row_seg[n:] == 0).all()
  assert row_ids[0] == CLS and row_ids[n - 1] == SEP
  seps = np.flatnonzero(row_ids[:n] == SEP)
  assert len(seps) in (1, 2)
  assert not (row_ids[1:n] == CLS).any()
  la = seps[0] + 1  # len([CLS] A [SEP])
  assert (row_seg[:la] == 0).all() and (row_seg[la:n] == 1).all()
  a = row_ids[1:la - 1].tolist()
  b = row_ids[la:n - 1].tolist() if len(seps) == 2 else []
  if len(seps) == 2:
    assert b, "a second segment is never empty"
  else:
    assert la == n
  return a, b


def decode_all(packed):
  return [decode(i, m, s) for i, m, s in zip(
      packed["input_ids"], packed["input_mask"], packed["segment_ids"])]


def random_documents(rng, num_docs, max_lines=30, max_line_len=20):
  docs, start = [], 0
  for _ in range(num_docs):
    doc = []
    for _ in range(int(rng.integers(1, max_lines + 1))):
      n = int(rng.integers(1, max_line_len + 1))
      doc.append(seq(start, n))
      start += n
    docs.append(doc)
  return docs


def test_pack_layout_exact():
  out = examples.pack_examples([([1, 2, 3], [4, 5]), ([6], [])], 10, **IDS)
  np.testing.assert_array_equal(out["input_ids"], [
      [CLS, 1, 2, 3, SEP, 4, 5, SEP, PAD, PAD],
      [CLS, 6, SEP, PAD, PAD, PAD, PAD, PAD, PAD, PAD]])
  np.testing.assert_array_equal(out["input_mask"], [
      [1, 1, 1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["segment_ids"], [
      [0, 0, 0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
  for v in out.values():
    assert v.dtype == np.int32 and v.shape == (2, 10)
  with pytest.raises(ValueError):
    examples.pack_examples([(list(range(8)), [1])], 10, **IDS)


def test_split_rule_without_overflow_to_a():
  # first target (128 - 3) // 2 = 62.  Lines 30, 31 fit (61 < 62); line 3 would
  # overflow A and the 50% draw says no -> B; line 4 -> B.  B is truncated to
  # 128 - 61 - 3 = 64 tokens.
  rng = ScriptedRng([], default=0.99)
  b = examples.ExampleBuilder(128, rng)
  lines = [seq(0, 30), seq(30, 31), seq(61, 40), seq(101, 40)]
  out = []
  for line in lines[:3]:
    out += b.add_line(line)
  assert out == []  # 101 < 128: still accumulating.
  out += b.add_line(lines[3])
  assert len(out) == 1
  a, bb = out[0]
  assert a == seq(0, 61)
  assert bb == seq(61, 64)


def test_split_rule_with_overflow_to_a():
  # Draws: single? 0.3 no; overflow-to-A for line 3: 0.3 yes; line 4 cannot go
  # to A (A is past the target) -> B, truncated to 128 - 101 - 3 = 24.
  rng = ScriptedRng([0.3, 0.3], default=0.99)
  b = examples.ExampleBuilder(128, rng)
  out = []
  for line in [seq(0, 30), seq(30, 31), seq(61, 40), seq(101, 40)]:
    out += b.add_line(line)
  (a, bb), = out
  assert a == seq(0, 101)
  assert bb == seq(101, 24)


def test_single_segment_and_short_target():
  # Example 1: single segment (0.05 < 0.1), then short target (0.01 < 0.05) of
  # 10 drawn by integers().  Example 2 (target 10, first target 3): lines of 4
  # tokens flush at 12 >= 10; A = first line, B = the rest.
  rng = ScriptedRng([0.05, 0.01], default=0.99, integers=[10])
  b = examples.ExampleBuilder(32, rng)
  out = []
  for i in range(11):
    out += b.add_line(seq(4 * i, 4))
  # 32 tokens -> one segment, A truncated to 30 (tokens 30 and 31 dropped).
  assert out[0] == (seq(0, 30), [])
  assert out[1] == (seq(32, 4), seq(36, 8))
  assert len(out) == 2
  assert rng.calls == 4  # single?, short?, then single?, short? (no 50% draw)


def test_document_end_flushes_and_empty_lines_are_ignored():
  rng = np.random.default_rng(0)
  b = examples.ExampleBuilder(64, rng)
  assert b.add_line([]) == []
  assert b.add_line(seq(0, 5)) == []
  assert b.end_document() != []
  assert b.end_document() == []  # Nothing pending.


def test_long_line_is_split_not_dropped():
  rng = np.random.default_rng(0)
  b = examples.ExampleBuilder(32, rng)
  out = b.add_line(seq(0, 3))  # Pending chunk, flushed before the long line.
  out += b.add_line(seq(3, 1000))
  out += b.end_document()
  assert b.long_lines == 1
  assert out[0] == (seq(0, 3), [])
  pieces = out[1:]
  assert len(pieces) == 34  # 33 full pieces of 30, then the 10 left over.
  assert all(bb == [] for _, bb in pieces)
  assert sum((a for a, _ in pieces), []) == seq(3, 1000)


def test_layout_and_no_token_lost_except_truncation():
  rng = np.random.default_rng(1)
  docs = random_documents(rng, 300, max_line_len=40)
  docs.append([seq(10**6, 300)])  # A line longer than max_len - 2.
  max_len = 48
  b = examples.ExampleBuilder(max_len, np.random.default_rng(2))
  total = 0
  for doc in docs:
    segs = []
    for line in doc:
      segs += b.add_line(line)
    segs += b.end_document()
    packed = examples.pack_examples(segs, max_len, **IDS)
    decoded = decode_all(packed)
    assert [(a, bb) for a, bb in decoded] == segs
    # Each example is a contiguous run of the document's tokens starting at a
    # line (or long-line piece) boundary; tokens are skipped only after a
    # truncated (full-length) example, and never past a document.
    stream = sum(doc, [])
    lengths = packed["input_mask"].sum(1)
    pos = 0
    for k, (a, bb) in enumerate(decoded):
      content = a + bb
      assert stream[pos:pos + len(content)] == content
      end = pos + len(content)
      # Where the next example starts (content ids are unique), or the end.
      nxt = stream.index(decoded[k + 1][0][0]) if k + 1 < len(decoded) else (
          len(stream))
      assert nxt >= end
      if nxt > end:
        # Tokens are dropped only by truncating a full example (max_len, or
        # max_len - 1 when A took max_len - 3 and left no room for B).
        assert lengths[k] >= max_len - 1
      pos = nxt
      total += 1
  assert total > 500


def test_statistics_over_many_draws():
  # One long document of 3-token lines: every chunk has >= 2 lines, so the
  # pair mode always fills B; full targets give exactly max_len tokens.
  max_len = 128
  lines = [seq(3 * i, 3) for i in range(60000)]
  packed = examples.create_examples([lines], max_len, **IDS,
                                    rng=np.random.default_rng(3))
  decoded = decode_all(packed)
  n = len(decoded)
  assert n > 1300
  single = np.mean([bb == [] for _, bb in decoded])
  assert 0.075 < single < 0.125, single
  lengths = packed["input_mask"].sum(1)
  short = lengths < max_len
  # 5% of targets are uniform in [5, 128]; a few of those still fill 128.
  assert 0.03 < short.mean() < 0.07, short.mean()
  assert lengths.min() >= 8  # Target 5 -> 6 tokens + 3 specials at least.
  assert 40 < lengths[short].mean() < 90
  assert (lengths[short] < 40).any() and (lengths[short] > 90).any()
  # Full-length pairs: A stops below the first target of 62 (at 60) or takes
  # the overflowing line with probability 1/2 (63).  (A few come from short
  # targets of 124..128, with other first targets.)
  full_pairs = np.array([len(a) for (a, bb), l in zip(decoded, lengths)
                         if bb and l == max_len])
  assert np.isin(full_pairs, [60, 63]).mean() > 0.97
  assert 0.4 < (full_pairs == 63).sum() / np.isin(full_pairs, [60, 63]).sum(
  ) < 0.6


def test_deterministic_for_a_seed():
  docs = random_documents(np.random.default_rng(5), 50)
  make = lambda s: examples.create_examples(  # pylint: disable=g-long-lambda
      docs, 64, **IDS, rng=np.random.default_rng(s))
  one, two, other = make(0), make(0), make(1)
  for k in examples.FEATURES:
    np.testing.assert_array_equal(one[k], two[k])
  assert any(one[k].shape != other[k].shape or (one[k] != other[k]).any()
             for k in examples.FEATURES)
