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
