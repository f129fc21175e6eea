"""Evaluation pictures for TensorBoard, rendered to numpy RGB images.

Scalars hide how a classifier fails; two pictures show it at a glance:
a reliability diagram (is the top-1 confidence honest?) and a confusion
picture (which classes get mixed up?). Both are drawn with matplotlib's Agg
backend on a private `Figure` (never pyplot), so rendering is thread-safe,
needs no display and leaks no figures. Each function returns one [H, W, 3]
uint8 image; add the batch axis before `SummaryWriter.write_images`.

The confusion picture stays readable for 1000 classes: instead of a
1000x1000 blur it shows the sub-matrix over the classes involved in the most
frequent mistakes. Counting is vectorized (one `np.bincount` over
`true * num_classes + pred`), so 50,000 examples x 1000 classes take
milliseconds.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_DPI = 100
# Above this many (true, pred) cells the dense bincount would cost too much
# memory (e.g. ImageNet-21k: 21843^2 cells); count the pairs by sorting.
_MAX_DENSE_CELLS = 1 << 22
_MAX_NAME_CHARS = 25
# Tolerance for accuracies/confidences that float error nudges past [0, 1].
_EPS = 1e-6


def _render(fig: Figure) -> np.ndarray:
  """Draws `fig` with Agg and returns its pixels as [H, W, 3] uint8 RGB."""
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  rgba = np.asarray(canvas.buffer_rgba())
  # Copy: the buffer belongs to the canvas and dies with it.
  return np.ascontiguousarray(rgba[..., :3])


def _text_image(lines: Sequence[str]) -> np.ndarray:
  """A small image that just says something (e.g. "no confusions")."""
  fig = Figure(figsize=(5, 2), dpi=_DPI, facecolor="white")
  fig.text(0.5, 0.5, "\n".join(lines), ha="center", va="center", fontsize=12,
           parse_math=False, linespacing=1.6)
  return _render(fig)


# ------------------------------------------------------------------------------
# Reliability diagram.
# ------------------------------------------------------------------------------


def _float_vector(x, name: str) -> np.ndarray:
  try:
    arr = np.asarray(x, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"reliability_diagram: {name} must be numeric, got "
                     f"{x!r:.80}: {e}") from None
  if arr.ndim != 1:
    raise ValueError(f"reliability_diagram: {name} must be 1-D (one value per "
                     f"bin), got shape {arr.shape}.")
  return arr


def _check_bins(lower, upper, accuracy, confidence, count):
  """Validates the per-bin arrays; returns them as float64 vectors."""
  names = ("bin_lower", "bin_upper", "bin_accuracy", "bin_confidence",
           "bin_count")
  arrays = [_float_vector(a, n)
            for a, n in zip((lower, upper, accuracy, confidence, count), names)]
  n_bins = len(arrays[0])
  if n_bins < 1:
    raise ValueError("reliability_diagram: bin_lower is empty; need at least "
                     "one bin.")
  for arr, name in zip(arrays[1:], names[1:]):
    if len(arr) != n_bins:
      raise ValueError(f"reliability_diagram: {name} has {len(arr)} values but "
                       f"bin_lower has {n_bins}; all five arrays need one "
                       f"value per bin.")
  lower, upper, accuracy, confidence, count = arrays

  def first_bad(mask):
    return int(np.flatnonzero(mask)[0])

  for arr, name in ((lower, "bin_lower"), (upper, "bin_upper")):
    bad = ~(np.isfinite(arr) & (arr >= 0) & (arr <= 1))
    if bad.any():
      i = first_bad(bad)
      raise ValueError(f"reliability_diagram: {name}[{i}] = {arr[i]} is not "
                       f"within [0, 1].")
  if (lower > upper).any():
    i = first_bad(lower > upper)
    raise ValueError(f"reliability_diagram: bin_lower[{i}] = {lower[i]} is "
                     f"above bin_upper[{i}] = {upper[i]}.")
  bad = ~(np.isfinite(count) & (count >= 0))
  if bad.any():
    i = first_bad(bad)
    raise ValueError(f"reliability_diagram: bin_count[{i}] = {count[i]} must "
                     f"be a non-negative number.")
  # Empty bins may hold NaN accuracy/confidence: only check the others.
  for arr, name in ((accuracy, "bin_accuracy"), (confidence, "bin_confidence")):
    bad = (count > 0) & ~(np.isfinite(arr) & (arr >= -_EPS) & (arr <= 1 + _EPS))
    if bad.any():
      i = first_bad(bad)
      raise ValueError(f"reliability_diagram: {name}[{i}] = {arr[i]} is not "
                       f"within [0, 1] (bin {i} holds {count[i]:g} examples).")
  return lower, upper, np.clip(accuracy, 0, 1), np.clip(confidence, 0, 1), count


def reliability_diagram(bin_lower: np.ndarray, bin_upper: np.ndarray,
                        bin_accuracy: np.ndarray, bin_confidence: np.ndarray,
                        bin_count: np.ndarray, *, title: str = "",
                        ece: float | None = None) -> np.ndarray:
  """Reliability diagram of top-1 confidence, as a [H, W, 3] uint8 image.

  Top: for each non-empty bin [bin_lower[i], bin_upper[i]] a bar of the bin's
  accuracy, the gap to the bin's mean confidence shaded, and the diagonal of
  perfect calibration. Bottom: how many examples fall in each bin. Bars use
  the true bin edges, so equal-mass bins (irregular edges) draw correctly.

  Args:
    bin_lower, bin_upper: bin edges within [0, 1], lower <= upper.
    bin_accuracy: fraction of correct top-1 predictions per bin.
    bin_confidence: mean top-1 confidence per bin.
    bin_count: examples per bin (>= 0); empty bins are not drawn and may hold
      NaN accuracy/confidence.
    title: shown above the diagram.
    ece: expected calibration error as a fraction (0.0321 shows "ECE 3.21%").
  """
  lower, upper, acc, conf, count = _check_bins(
      bin_lower, bin_upper, bin_accuracy, bin_confidence, bin_count)
  if ece is not None:
    try:
      ece = float(ece)
    except (TypeError, ValueError):
      raise ValueError(f"reliability_diagram: ece must be a number, got "
                       f"{ece!r}.") from None
    if not (np.isfinite(ece) and ece >= 0):
      raise ValueError(f"reliability_diagram: ece must be finite and >= 0, got "
                       f"{ece}.")

  keep = count > 0
  lower, upper = lower[keep], upper[keep]
  acc, conf, count = acc[keep], conf[keep], count[keep]
  # Equal-mass bins can collapse to one confidence value (lower == upper):
  # give such bars a sliver of width so they stay visible.
  width = np.maximum(upper - lower, 0.004)

  fig = Figure(figsize=(6.4, 6.0), dpi=_DPI, facecolor="white")
  grid = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08,
                          left=0.12, right=0.97, top=0.92, bottom=0.09)
  ax = fig.add_subplot(grid[0])
  hist = fig.add_subplot(grid[1], sharex=ax)

  ax.bar(lower, acc, width=width, align="edge", color="#4c72b0",
         edgecolor="#1f3b63", linewidth=0.6, label="accuracy", zorder=2)
  # The calibration gap: from the bin's accuracy to its mean confidence.
  ax.bar(lower, conf - acc, bottom=acc, width=width, align="edge",
         color="#dd5555", alpha=0.35, edgecolor="#aa2222", linewidth=0.6,
         hatch="//", label="gap to mean confidence", zorder=3)
  ax.plot([0, 1], [0, 1], "--", color="#444444", linewidth=1,
          label="perfect calibration", zorder=4)
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_ylabel("accuracy")
  ax.grid(True, color="#dddddd", linewidth=0.5, zorder=0)
  ax.legend(loc="upper left", fontsize=9, framealpha=0.9)
  ax.tick_params(labelbottom=False)

  hist.bar(lower, count, width=width, align="edge", color="#8c8c8c",
           edgecolor="#444444", linewidth=0.6, zorder=2)
  hist.set_xlabel("top-1 confidence")
  hist.set_ylabel("count")
  hist.grid(True, axis="y", color="#dddddd", linewidth=0.5, zorder=0)
  # Headroom above the tallest bar for the summary line.
  hist.set_ylim(0, 1.3 * count.max() if len(count) else 1)
  hist.text(0.01, 0.95, f"{count.sum():,.0f} examples, {keep.sum()} non-empty "
            f"bins", transform=hist.transAxes, ha="left", va="top", fontsize=8)

  heading = title
  if ece is not None:
    score = f"ECE {100 * ece:.2f}%"
    heading = f"{title}  ({score})" if title else score
  if heading:
    fig.suptitle(heading, fontsize=12, parse_math=False)
  return _render(fig)


# ------------------------------------------------------------------------------
# Confusions.
# ------------------------------------------------------------------------------


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _ids(x, name: str, num_classes: int, fn: str) -> np.ndarray:
  arr = np.asarray(x)
  if arr.ndim != 1:
    raise ValueError(f"{fn}: {name} must be a 1-D array of class ids, got "
                     f"shape {arr.shape}.")
  if arr.size == 0:
    return arr.astype(np.int64)
  if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{fn}: {name} must hold integer class ids, got dtype "
                     f"{arr.dtype}.")
  arr = arr.astype(np.int64)
  bad = (arr < 0) | (arr >= num_classes)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(f"{fn}: {name}[{i}] = {arr[i]} is outside [0, "
                     f"num_classes={num_classes}).")
  return arr


def _pair_counts(labels, predictions, num_classes: int,
                 fn: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Validates the inputs; returns the non-zero (true, pred, count) cells.

  The cells come in (true, pred) ascending order, diagonal included.
  """
  if not _is_int(num_classes) or num_classes < 1:
    raise ValueError(f"{fn}: num_classes must be a positive int, got "
                     f"{num_classes!r}.")
  num_classes = int(num_classes)
  labels = _ids(labels, "labels", num_classes, fn)
  predictions = _ids(predictions, "predictions", num_classes, fn)
  if len(labels) != len(predictions):
    raise ValueError(f"{fn}: labels has {len(labels)} entries but predictions "
                     f"has {len(predictions)}; need one prediction per label.")
  codes = labels * num_classes + predictions
  if num_classes * num_classes <= _MAX_DENSE_CELLS:
    dense = np.bincount(codes, minlength=num_classes * num_classes)
    cells = np.flatnonzero(dense)
    counts = dense[cells]
  else:
    cells, counts = np.unique(codes, return_counts=True)
  return cells // num_classes, cells % num_classes, counts.astype(np.int64)


def _ranked_confusions(true, pred, count):
  """Off-diagonal cells sorted by count descending, then (true, pred)."""
  off = true != pred
  true, pred, count = true[off], pred[off], count[off]
  # lexsort: last key is primary. The cells already come in (true, pred)
  # order, so a stable sort by -count alone would do; be explicit anyway.
  order = np.lexsort((pred, true, -count))
  return true[order], pred[order], count[order]


def top_confusions(labels: np.ndarray, predictions: np.ndarray,
                   num_classes: int, n: int) -> list[tuple[int, int, int]]:
  """The `n` most frequent mistakes as (true, predicted, count) triples.

  Sorted by count descending, ties by (true, predicted) ascending. Fewer than
  `n` if there are fewer distinct off-diagonal pairs.
  """
  if not _is_int(n) or n < 0:
    raise ValueError(f"top_confusions: n must be a non-negative int, got "
                     f"{n!r}.")
  true, pred, count = _ranked_confusions(
      *_pair_counts(labels, predictions, num_classes, "top_confusions"))
  return [(int(t), int(p), int(c))
          for t, p, c in zip(true[:n], pred[:n], count[:n])]


def _select_classes(ranked, num_classes: int, max_classes: int) -> list[int]:
  if num_classes <= max_classes:
    return list(range(num_classes))
  true, pred, _ = ranked
  chosen: dict[int, None] = {}  # Insertion-ordered set.
  # Bounded loop: while fewer than max_classes classes are chosen, every pair
  # seen lies among them, so this runs at most ~max_classes^2 times.
  for t, p in zip(true.tolist(), pred.tolist()):
    for c in (t, p):
      if c not in chosen:
        chosen[c] = None
        if len(chosen) == max_classes:
          return list(chosen)
  return list(chosen)


def _check_max_classes(max_classes, fn: str) -> int:
  if not _is_int(max_classes) or max_classes < 1:
    raise ValueError(f"{fn}: max_classes must be a positive int, got "
                     f"{max_classes!r}.")
  return int(max_classes)


def confusion_classes(labels: np.ndarray, predictions: np.ndarray,
                      num_classes: int, max_classes: int) -> list[int]:
  """The classes `confusion_picture` shows, in display order.

  All classes in id order if num_classes <= max_classes. Otherwise walk the
  mistakes from most to least frequent (see `top_confusions`) and collect the
  true, then the predicted class of each in order of first appearance, until
  `max_classes` are collected (fewer if the mistakes involve fewer classes;
  none if there are no mistakes).
  """
  max_classes = _check_max_classes(max_classes, "confusion_classes")
  cells = _pair_counts(labels, predictions, num_classes, "confusion_classes")
  return _select_classes(_ranked_confusions(*cells), num_classes, max_classes)


def _short(name: str) -> str:
  if len(name) <= _MAX_NAME_CHARS:
    return name
  return name[:_MAX_NAME_CHARS - 1] + "…"


def confusion_picture(labels: np.ndarray, predictions: np.ndarray,
                      num_classes: int, *,
                      class_names: Sequence[str] | None = None,
                      max_classes: int = 20, title: str = "") -> np.ndarray:
  """The confusion sub-matrix over the most confused classes, as an image.

  Rows are true classes, columns predicted classes, both in the order of
  `confusion_classes`. Off-diagonal cells are coloured by count; diagonal
  cells (correct predictions) are drawn neutral so they do not swamp the
  colour scale. Non-zero counts are written in the cells (unless the cells
  are too small to read, i.e. with a very large `max_classes`).

  Returns a [H, W, 3] uint8 image (at most about 1000 px wide). Without any
  mistake it is a small image saying "no confusions".
  """
  fn = "confusion_picture"
  max_classes = _check_max_classes(max_classes, fn)
  true, pred, count = _pair_counts(labels, predictions, num_classes, fn)
  if class_names is None:
    class_names = [str(i) for i in range(num_classes)]
  else:
    class_names = [str(c) for c in class_names]
    if len(class_names) != num_classes:
      raise ValueError(f"{fn}: class_names has {len(class_names)} names but "
                       f"num_classes is {num_classes}.")
  n_examples = int(count.sum())
  ranked = _ranked_confusions(true, pred, count)
  n_errors = int(ranked[2].sum())
  if n_errors == 0:
    what = "no examples" if n_examples == 0 else f"all {n_examples:,} correct"
    return _text_image([title, "no confusions", f"({what})"] if title
                       else ["no confusions", f"({what})"])

  classes = _select_classes(ranked, num_classes, max_classes)
  n = len(classes)
  # Scatter the non-zero cells whose row and column are both shown.
  pos = np.full(num_classes, -1, np.int64)
  pos[classes] = np.arange(n)
  shown = (pos[true] >= 0) & (pos[pred] >= 0)
  sub = np.zeros((n, n), np.int64)
  sub[pos[true[shown]], pos[pred[shown]]] = count[shown]
  diag = np.eye(n, dtype=bool)
  shown_errors = int(sub[~diag].sum())

  # Size the figure from the label lengths so nothing is cut off, keeping
  # it under ~1000 px wide: cells shrink as classes grow.
  names = [_short(class_names[c]) for c in classes]
  longest = max(len(s) for s in names)
  cbar_in, pad_in, title_in = 1.0, 0.25, 0.75
  for label_fs in (8, 7, 6, 5, 4):  # Smaller labels when the rows get thin.
    name_in = longest * 0.62 * label_fs / 72 + 0.45
    cell_in = (9.9 - name_in - cbar_in - pad_in) / n
    if cell_in * 72 >= 1.25 * label_fs:
      break
  cell_in = min(cell_in, 0.45)
  grid_in = n * cell_in
  needed_in = name_in + grid_in + cbar_in + pad_in
  # At least 6 in wide so the heading fits; centre the matrix in any slack.
  width_in = max(needed_in, 6.0)
  left_in = name_in + (width_in - needed_in) / 2
  height_in = title_in + grid_in + name_in + pad_in
  fig = Figure(figsize=(width_in, height_in), dpi=_DPI, facecolor="white")
  ax = fig.add_axes((left_in / width_in, (name_in + 0.05) / height_in,
                     grid_in / width_in, grid_in / height_in))
  cax = fig.add_axes(((left_in + grid_in + 0.15) / width_in,
                      (name_in + 0.05) / height_in, 0.15 / width_in,
                      grid_in / height_in))

  # Diagonal masked out of the colour scale ("bad" colour = neutral grey).
  off_values = np.ma.masked_array(sub.astype(float), mask=diag)
  vmax = max(int(sub[~diag].max()), 1)
  cmap = colormaps["Reds"].with_extremes(bad="#f2f2f2")
  image = ax.imshow(off_values, cmap=cmap, vmin=0, vmax=vmax,
                    interpolation="nearest", aspect="equal")
  fig.colorbar(image, cax=cax).ax.tick_params(labelsize=7)

  ticks = np.arange(n)
  ax.set_xticks(ticks, names, rotation=90, fontsize=label_fs, parse_math=False)
  ax.set_yticks(ticks, names, fontsize=label_fs, parse_math=False)
  ax.set_xlabel("predicted class", fontsize=9)
  ax.set_ylabel("true class", fontsize=9)
  # Thin white lines between cells.
  ax.set_xticks(ticks[:-1] + 0.5, minor=True)
  ax.set_yticks(ticks[:-1] + 0.5, minor=True)
  ax.grid(which="minor", color="white", linewidth=0.8)
  ax.tick_params(which="minor", length=0)

  # Counts in the non-zero cells, with a font that fits the widest count.
  digits = len(str(int(sub.max())))
  cell_fs = min(9.0, cell_in * 72 / (0.62 * digits + 0.5))
  if cell_fs >= 4:
    for r, c in zip(*np.nonzero(sub)):
      value = int(sub[r, c])
      if r == c:
        color, style = "#777777", "italic"
      else:
        color, style = ("white" if value > 0.6 * vmax else "black"), "normal"
      ax.text(c, r, str(value), ha="center", va="center", fontsize=cell_fs,
              color=color, fontstyle=style)

  subset = (f"all {num_classes} classes" if n == num_classes
            else f"{n} most confused of {num_classes} classes")
  summary = (f"{subset}; {shown_errors:,} of {n_errors:,} errors shown "
             f"({n_examples:,} examples; diagonal in grey)")
  heading = f"{title}\n{summary}" if title else summary
  fig.text(0.5, 1 - 0.1 / height_in, heading, ha="center", va="top",
           fontsize=9, parse_math=False)
  return _render(fig)


def _displayable(images: np.ndarray, fn: str) -> np.ndarray:
  """[N, H, W, C] of any range -> floats in [0, 1], C = 1 or 3 (for imshow).

  uint8 is divided by 255; floats are stretched from their own min/max (pp
  ops leave images in [-1, 1], [0, 1] or normalised by a mean/std).
  """
  images = np.asarray(images)
  if images.ndim == 3:  # [N, H, W]: greyscale without a channel axis
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"{fn}: images must be [N, H, W, 1 or 3], got shape {images.shape}.")
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  images = images.astype(np.float32)
  if not np.isfinite(images).all():
    raise ValueError(f"{fn}: images hold NaN or inf.")
  lo, hi = float(images.min()), float(images.max())
  return (images - lo) / (hi - lo) if hi > lo else np.zeros_like(images)


def image_grid(images: np.ndarray, captions: Sequence[str] | None = None, *,
               title: str = "", columns: int = 8, max_caption_chars: int = 40) -> np.ndarray:
  """Images in a grid, each with its caption (class name, text, two labels).

  For "what does the model see" pictures: a training batch after
  augmentation, suspected label errors with their given and suggested
  labels. Captions may hold "\\n" for a second line. Returns [H, W, 3] uint8.
  """
  fn = "image_grid"
  pixels = _displayable(images, fn)
  n = len(pixels)
  if n == 0:
    return _text_image([title, "no images"] if title else ["no images"])
  if captions is not None and len(captions) != n:
    raise ValueError(f"{fn}: {len(captions)} captions for {n} images.")
  columns = max(1, min(int(columns), n))
  rows = -(-n // columns)
  lines = max((str(c).count("\n") + 1 for c in captions), default=0) if captions else 0
  cell_in, caption_in, title_in = 1.3, 0.16 * lines, 0.4 if title else 0.1
  fig = Figure(figsize=(columns * cell_in, rows * (cell_in + caption_in) + title_in),
               dpi=_DPI, facecolor="white")
  if title:
    fig.suptitle(title, fontsize=10, y=1 - 0.1 / (rows * (cell_in + caption_in) + title_in))
  grid = fig.add_gridspec(rows, columns, left=0.01, right=0.99, bottom=0.01,
                          top=1 - title_in / (rows * (cell_in + caption_in) + title_in),
                          hspace=0.1 + caption_in / cell_in, wspace=0.05)
  for i in range(n):
    ax = fig.add_subplot(grid[i // columns, i % columns])
    image = pixels[i]
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image,
              cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_axis_off()
    if captions is not None:
      text = "\n".join(line[:max_caption_chars] for line in str(captions[i]).split("\n"))
      ax.set_title(text, fontsize=6, parse_math=False)
  return _render(fig)
