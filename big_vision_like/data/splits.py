"""Process shares of a TFDS split, in absolute record positions.

A config names a split the TFDS way ("train", "train[:99%]", "train[99%:]",
"validation+test"). For multi-process input each process reads a disjoint,
contiguous share of it, and for error messages we must find the single
record behind a failing example. Both need the split as absolute record
ranges, so we resolve the spec once (TFDS's own `ReadInstruction` rules, so
percent slices round exactly as in `tfds.load`) and then cut shares and
single records out of that list ourselves.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds


@dataclasses.dataclass(frozen=True)
class Share:
  """Records [start, stop) of a split (in the split spec's own order)."""
  split: str  # The spec this share was cut from.
  ranges: tuple[tuple[str, int, int], ...]  # Absolute (split, from, to).
  start: int
  stop: int

  @property
  def size(self) -> int:
    return self.stop - self.start

  @property
  def spec(self) -> str:
    """A TFDS split string that reads exactly this share, in order."""
    return _spec(self._pieces(self.start, self.stop)) if self.size else ""

  def record_spec(self, index: int) -> str:
    """The split string of record `index` (0-based) of this share."""
    if not 0 <= index < self.size:
      raise IndexError(f"record {index} is outside this share of "
                       f"{self.size} records of {self.split!r}.")
    return _spec(self._pieces(self.start + index, self.start + index + 1))

  def record_names(self) -> list[str]:
    """`{split}_{index:05d}` for each record of the share, in order.

    The index is the record's position in its TFDS split, so the same record
    gets the same name whatever the slicing, process count or batch size.
    """
    return record_names(self._pieces(self.start, self.stop))

  def _pieces(self, start: int, stop: int) -> list[tuple[str, int, int]]:
    pieces, offset = [], 0
    for name, lo, hi in self.ranges:
      n = hi - lo
      a, b = max(start - offset, 0), min(stop - offset, n)
      if a < b:
        pieces.append((name, lo + a, lo + b))
      offset += n
    return pieces


def record_names(ranges: tuple[tuple[str, int, int], ...] | list) -> list[str]:
  """`{split}_{index:05d}` of every record of absolute (split, from, to) ranges."""
  return [f"{name}_{i:05d}" for name, lo, hi in ranges for i in range(lo, hi)]


def _spec(pieces: list[tuple[str, int, int]]) -> str:
  return "+".join(f"{name}[{lo}:{hi}]" for name, lo, hi in pieces)


def resolve(builder: tfds.core.DatasetBuilder,
            split: str) -> tuple[tuple[str, int, int], ...]:
  """The split spec as absolute (split, from, to) record ranges."""
  infos = builder.info.splits
  try:
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(
        infos)
  except (KeyError, ValueError, AssertionError, AttributeError) as e:
    raise ValueError(
        f"Dataset {builder.info.full_name!r}: bad split {split!r} "
        f"(its splits are {sorted(infos.keys())}): {e}") from e
  ranges = []
  for instr in instructions:
    n = infos[instr.splitname].num_examples
    lo = 0 if instr.from_ is None else instr.from_
    hi = n if instr.to is None else instr.to
    ranges.append((instr.splitname, lo, hi))
  return tuple(ranges)


def process_share(builder: tfds.core.DatasetBuilder, split: str, *,
                  process_index: int, process_count: int,
                  drop_remainder: bool) -> Share:
  """This process's contiguous, disjoint share of `split`.

  With `drop_remainder=False` shares differ by at most one record (the first
  ones are larger) and their union is the whole split; with True all shares
  are equal and up to `process_count - 1` trailing records are left out.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in "
                     f"[0, {process_count}).")
  ranges = resolve(builder, split)
  total = sum(hi - lo for _, lo, hi in ranges)
  base, extra = divmod(total, process_count)
  if drop_remainder:
    start, stop = process_index * base, (process_index + 1) * base
  else:
    start = process_index * base + min(process_index, extra)
    stop = start + base + (process_index < extra)
  return Share(split, ranges, start, stop)
