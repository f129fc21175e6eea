"""`python -m big_vision_like.tools.score_predictions`: tables, JSON, refusals."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from big_vision_like import label_sources
from big_vision_like.tools import score_predictions as tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = [label_sources.real_file_name(i) for i in range(6)]


def real_json(tmp_path, sets=None):
  data = [[] for _ in range(label_sources.REAL_LENGTH)]
  for i, s in enumerate(sets or [[1], [2, 3], [], [4], [5, 0], [9]]):
    data[i] = s
  path = tmp_path / "real.json"
  path.write_text(json.dumps(data))
  return str(path)


def npz(tmp_path, name="preds.npz", **arrays):
  path = tmp_path / name
  np.savez(path, **arrays)
  return str(path)


def run_cli(*args):
  return tool.main([str(a) for a in args])


def test_table_and_json_from_an_npz_of_models(tmp_path, capsys):
  # Order differs from the label file: the join is on names.
  order = [5, 0, 4, 1, 3, 2]
  top = np.array([[1, 7], [3, 2], [8, 8], [4, 1], [0, 5], [9, 1]])[order]
  path = npz(tmp_path, file_name=np.array(NAMES)[order], m=top,
             label=np.array([1, 2, 6, 4, 5, 3])[order])
  out_json = tmp_path / "out.json"
  assert run_cli(path, "--labels", real_json(tmp_path), "--json", out_json) == 0
  table = capsys.readouterr().out
  assert table.splitlines()[0].startswith("model") and "real@1" in table
  got = json.loads(out_json.read_text())["m"]
  # Sets of images 0..5: {1}, {2,3}, {} (excluded), {4}, {5,0}, {9}.
  # Top-1 1, 3, -, 4, 0, 9 -> all 5 counted images right; original labels
  # 1,2,6,4,5,3 -> top-1 right for images 0 and 3 only.
  assert got["real@1"] == 1.0 and got["num_counted"] == 5 and got["num_empty"] == 1
  assert got["prec@1"] == pytest.approx(2 / 6)
  assert got["multi_label_fraction"] == pytest.approx(2 / 5)


def test_logits_npy_with_file_names_and_stdout_json(tmp_path, capsys):
  logits = np.zeros((6, 10), np.float32)
  logits[np.arange(6), [1, 2, 0, 4, 0, 8]] = 1.0
  np.save(tmp_path / "logits.npy", logits)
  (tmp_path / "names.txt").write_text("\n".join(NAMES) + "\n")
  assert run_cli(tmp_path / "logits.npy", "--file_names", tmp_path / "names.txt",
                 "--labels", real_json(tmp_path), "--json", "-") == 0
  got = json.loads(capsys.readouterr().out)["logits"]
  assert got["real@1"] == pytest.approx(4 / 5)  # image 5 predicts 8, not 9


@pytest.mark.parametrize("case,message", [
    ("unknown", r"1 of 6 file names are not in the labels .*'nope.JPEG'"),
    ("duplicate", r"1 file names occur more than once"),
    ("out_of_range", r"class id 1000 \(row 2\) is out of range \[0, 1000\)"),
    ("wrong_length", r"has 50,000 entries .* this one has 3"),
    ("no_names", r"no file_name array; pass --file_names"),
    ("rows", r"'m' has 5 rows but there are 6 file names"),
    ("missing", r"predictions file .* does not exist"),
])
def test_bad_inputs_are_refused_with_the_culprit(tmp_path, capsys, case, message):
  labels = real_json(tmp_path)
  names = np.array(NAMES)
  top = np.array([[1], [2], [3], [4], [5], [9]])
  if case == "unknown":
    names = names.copy()
    names[3] = "nope.JPEG"
  if case == "duplicate":
    names = names.copy()
    names[3] = names[0]
  if case == "out_of_range":
    top = top.copy()
    top[2] = 1000
  if case == "wrong_length":
    (tmp_path / "short.json").write_text("[[1], [2], []]")
    labels = str(tmp_path / "short.json")
  arrays = {"file_name": names, "m": top[:5] if case == "rows" else top}
  if case == "no_names":
    arrays.pop("file_name")
  path = npz(tmp_path, **arrays) if case != "missing" else str(tmp_path / "none.npz")
  assert run_cli(path, "--labels", labels) == 2
  err = capsys.readouterr().err
  assert err.startswith("score_predictions: error:")
  assert __import__("re").search(message, err), err


def test_cli_runs_as_a_module(tmp_path):
  path = npz(tmp_path, file_name=np.array(NAMES), m=np.array([[1], [2], [3], [4], [5], [9]]))
  proc = subprocess.run([sys.executable, "-m", "big_vision_like.tools.score_predictions",
                         path, "--labels", real_json(tmp_path), "--json", "-"],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert json.loads(proc.stdout)["m"]["real@1"] == 1.0


# ------------------------------------------------ files that are not prediction dumps


def write_bytes(tmp_path, name, data):
  path = tmp_path / name
  path.write_bytes(data)
  return str(path)


def open_bytes(path):
  with open(path, "rb") as f:
    return f.read()


def refusal(path, *args):
  """The error line of the CLI on `path` (exit status 2, never a traceback)."""
  import contextlib
  import io
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    assert run_cli(path, *args) == 2
  text = err.getvalue()
  assert text.startswith("score_predictions: error:") and text.count("\n") == 1, text
  return text


@pytest.mark.parametrize("case,problem", [
    ("text", r"not an \.npz archive .* nor an \.npy file .*looks like text"),
    ("json", r"not an \.npz archive .* nor an \.npy file .*looks like JSON"),
    ("empty", r"not an \.npz archive .*it is empty"),
    ("truncated", r"truncated or corrupt \.npz archive"),
    ("truncated_npy", r"truncated or corrupt \.npy file"),
    ("npy_named_npz", r"it is named \.npz but is an \.npy file.*pass --file_names"),
    ("npy", (r"an \.npy file holds one array \(shape \(6, 5\), dtype float32\) and no "
             r"file names; pass --file_names")),
    ("objects", r"array 'm' holds Python objects \(dtype=object\)"),
    ("no_predictions", (r"no prediction arrays \(topk_scores cannot be scored without "
                        r"topk_ids.*Needed: `file_name` .*`topk_ids`.*it has: file_name "
                        r"\(6,\) <U\d+, label \(6,\) int64, topk_scores \(6, 5\) "
                        r"float32")),
    ("no_names", r"no file_name array; pass --file_names.*it has: m \(6, 1\) int64"),
])
def test_files_that_are_not_dumps_name_the_file_and_the_problem(tmp_path, case, problem):
  logits = np.zeros((6, 5), np.float32)
  if case == "text":
    path = write_bytes(tmp_path, "preds.npz", b"ILSVRC2012_val_00000001.JPEG 3\n")
  elif case == "json":
    path = write_bytes(tmp_path, "preds.npz", b'  {"ILSVRC2012_val_00000001.JPEG": 3}')
  elif case == "empty":
    path = write_bytes(tmp_path, "preds.npz", b"")
  elif case == "truncated":
    whole = open_bytes(npz(tmp_path, "whole.npz", file_name=np.array(NAMES), m=logits))
    path = write_bytes(tmp_path, "preds.npz", whole[:len(whole) // 2])
  elif case in ("npy", "npy_named_npz", "truncated_npy"):
    np.save(tmp_path / "whole.npy", logits)
    whole = (tmp_path / "whole.npy").read_bytes()
    name = "preds.npz" if case == "npy_named_npz" else "preds.npy"
    path = write_bytes(tmp_path, name, whole[:100] if case == "truncated_npy" else whole)
  elif case == "objects":
    path = str(tmp_path / "preds.npz")
    np.savez(path, file_name=np.array(NAMES), m=np.array([None] * 6, object))
  elif case == "no_predictions":
    path = npz(tmp_path, file_name=np.array(NAMES), label=np.arange(6),
               topk_scores=np.ones((6, 5), np.float32))
  else:
    path = npz(tmp_path, m=np.arange(6)[:, None])
  err = refusal(path, "--labels", real_json(tmp_path))
  assert f"error: {path}: " in err, err  # the file comes first
  assert __import__("re").search(problem, err), err
  assert "pickled data" not in err and "allow_pickle" not in err


# ----------------------------------------------- float arrays: logits or top-k scores?


def mapping_json(tmp_path, labels):
  """{file_name: id}: a label source that does not say how many classes there are."""
  path = tmp_path / "labels.json"
  path.write_text(json.dumps(dict(zip(NAMES, labels))))
  return str(path)


# A 5-class problem: labels of images 0..5, and logits whose argmax is right
# for images 0, 1, 2 and 3 (4 and 5 predict 0); rows are not sorted.
LABELS5 = [3, 1, 4, 2, 2, 1]
LOGITS5 = np.array([[0.1, 0.2, 0.0, 0.9, 0.3],
                    [0.0, 0.8, 0.1, 0.2, 0.3],
                    [0.2, 0.1, 0.3, 0.0, 0.7],
                    [0.1, 0.0, 0.6, 0.2, 0.3],
                    [0.9, 0.1, 0.0, 0.2, 0.3],   # label 2 is 4th: in the top 5 only
                    [0.9, 0.5, 0.0, 0.2, 0.3]],  # label 1 is 2nd
                   np.float32)


def test_sorted_top5_scores_against_imagenet_labels_are_refused(tmp_path):
  # The reported bug: top-5 scores [N, 5] were scored as 5-class logits.
  scores = -np.sort(-np.random.default_rng(0).random((6, 5), np.float32), axis=1)
  path = npz(tmp_path, file_name=np.array(NAMES), m=scores)
  err = refusal(path, "--labels", real_json(tmp_path))
  assert f"{path}: array 'm' of shape (6, 5) and dtype float32 is ambiguous" in err
  assert "every row is sorted best first" in err and "--kind logits|topk" in err
  # Unsorted, the 5 columns still cannot hold ImageNet classes up to 9.
  path = npz(tmp_path, "unsorted.npz", file_name=np.array(NAMES), m=LOGITS5)
  err = refusal(path, "--labels", real_json(tmp_path))
  assert (f"{path}: 'm' (logits of shape (6, 5), dtype float32): 5 columns, but the labels "
          f"({tmp_path / 'real.json'}) use class ids up to 9" in err)
  assert "--kind logits" in err and "--kind topk" in err


def test_logits_of_the_wrong_class_count_are_refused(tmp_path):
  path = npz(tmp_path, file_name=np.array(NAMES), m=LOGITS5)
  err = refusal(path, "--labels", mapping_json(tmp_path, LABELS5), "--num_classes", "1000")
  assert f"{path}: 'm' (logits of shape (6, 5)" in err
  assert "5 columns, but --num_classes says 1000 classes" in err and "--kind logits" in err
  # The labels' own count: one-hot label vectors of 1000 classes in the file.
  onehot = np.zeros((6, 1000), np.float32)
  onehot[np.arange(6), LABELS5] = 1
  path = npz(tmp_path, "own.npz", file_name=np.array(NAMES), m=LOGITS5, label=onehot)
  err = refusal(path)
  assert "5 columns, but the labels" in err and "says 1000 classes" in err


def test_a_float_array_named_like_scores_needs_its_kind(tmp_path):
  path = npz(tmp_path, file_name=np.array(NAMES), scores=LOGITS5)
  labels = mapping_json(tmp_path, LABELS5)
  err = refusal(path, "--labels", labels)
  assert f"{path}: array 'scores' of shape (6, 5) and dtype float32 is ambiguous" in err
  assert "its name 'scores' says top-k scores" in err
  got = tool.score_file(path, labels=labels, kind="logits")["scores"]
  assert got["prec@1"] == pytest.approx(4 / 6)
  assert got["prec@5"] == 1.0  # 5 classes: every label is in the top 5
  assert got["accuracy"] == pytest.approx(4 / 6)  # calibration: logits were used


def test_kind_flag_scores_the_ambiguous_arrays_right(tmp_path, capsys):
  labels = mapping_json(tmp_path, LABELS5)
  # Unsorted logits under a neutral name, labels without a class count: logits.
  path = npz(tmp_path, file_name=np.array(NAMES), m=LOGITS5)
  assert tool.score_file(path, labels=labels)["m"]["prec@1"] == pytest.approx(4 / 6)
  # The same logits, sorted into top-2 scores and ids: ids saved as floats.
  ids = np.argsort(-LOGITS5, axis=1, kind="stable")[:, :2]
  path = npz(tmp_path, "top2.npz", file_name=np.array(NAMES), top2=ids.astype(np.float32))
  err = refusal(path, "--labels", labels)
  assert "array 'top2' of shape (6, 2) and dtype float32 is ambiguous" in err
  assert run_cli(path, "--labels", labels, "--kind", "topk", "--json", "-") == 0
  got = json.loads(capsys.readouterr().out)["top2"]
  # Top-2: images 0-3 right at 1; image 5 has its label 1 second; image 4 misses.
  assert got["prec@1"] == pytest.approx(4 / 6) and "prec@5" not in got
  assert "accuracy" not in got  # ids only: no calibration
  # --kind topk refuses real scores: they are not class ids.
  scores = np.take_along_axis(LOGITS5, ids, 1)
  path = npz(tmp_path, "s.npz", file_name=np.array(NAMES), top2=scores)
  err = refusal(path, "--labels", labels, "--kind", "topk")
  assert f"{path}: array 'top2' of shape (6, 2)" in err and "non-integer values" in err
  # Stating the kind of a 5-column array as logits with ImageNet-range labels
  # is still refused, by the labels: never a silent metric.
  path = npz(tmp_path, "five.npz", file_name=np.array(NAMES), m=LOGITS5)
  err = refusal(path, "--labels", real_json(tmp_path), "--kind", "logits")
  assert "out of range [0, 5)" in err


def test_a_dump_with_logits_and_kind_topk_scores_the_ids_only(tmp_path):
  ids = np.argsort(-LOGITS5, axis=1, kind="stable")[:, :5].astype(np.int32)
  path = npz(tmp_path, file_name=np.array(NAMES), topk_ids=ids,
             topk_scores=np.take_along_axis(LOGITS5, ids, 1), logits=LOGITS5,
             label=np.array(LABELS5), meta_num_classes=np.asarray(5))
  both = tool.score_file(path)["preds"]
  only_ids = tool.score_file(path, kind="topk")["preds"]
  assert both["prec@1"] == only_ids["prec@1"] == pytest.approx(4 / 6)
  assert "ece" in both and "ece" not in only_ids
  err = refusal(path, "--num_classes", "1000")
  assert "5 columns, but --num_classes says 1000 classes" in err


def test_labels_numbered_in_a_subset_do_not_count_as_the_logits_classes(tmp_path):
  # Labels of 3 subset classes (one-hot [N, 3]: 3 classes), logits over 10.
  subset = [2, 5, 7]
  label = np.array([0, 1, 2, 0, 1, 2])  # -> classes 2, 5, 7, 2, 5, 7
  onehot = np.eye(3, dtype=np.float32)[label]
  logits = np.zeros((6, 10), np.float32)
  logits[:, 9] = 5.0  # outside the subset: ignored by the restriction
  logits[np.arange(6), [2, 5, 7, 5, 5, 2]] = 1.0  # rows 3 and 5 wrong
  path = npz(tmp_path, file_name=np.array(NAMES), m=logits, label=onehot)
  got = tool.score_file(path, class_subset=subset, labels_in_subset=True)["m"]
  assert got["prec@1"] == pytest.approx(4 / 6)
