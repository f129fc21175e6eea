"""ILSVRC-2012 tarballs -> TFDS imagenet2012 / imagenet2012_real, for real.

The test writes tiny tarballs in the official layout (a train tar of
per-class `nXXXXXXXX.tar` files, a val tar of `ILSVRC2012_val_%08d.JPEG`),
runs the command-line tool in a subprocess (TFDS's own builders do the
work) and reads the result through `tfds_source` and the eval pipeline.
Every image is a flat grey whose value is encoded in its file name, so
images can be matched to names and labels after the whole pipeline.
"""

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from big_vision_like.data import (bundled, imagenet_variants, input_pipeline,
                                  prepare_imagenet, tfds_source)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_JSON = bundled.real_json_path()  # What the tool uses when given none.
# Synsets with known TFDS label ids (lines 1, 231 and 1000 of labels.txt).
SYNSETS = {"n01440764": 0, "n02105855": 230, "n15075141": 999}
PER_CLASS = 20
NUM_VAL = 6
# The first ReaL sets of real.json (image 1's is empty).
REAL_SETS = [[], [970, 795], [230, 231], [809], [516, 850]]
# The one PNG in the real train tar; TFDS's builder converts it to JPEG.
PNG_IMAGE = "n02105855_2933.JPEG"


def grey(value, encoder=tf.io.encode_jpeg):
  return encoder(np.full((9, 11, 3), value, np.uint8)).numpy()


def add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def train_file_names():
  """Per class n..._1.JPEG to n..._20.JPEG, except that n02105855's last is
  the real PNG-in-disguise n02105855_2933.JPEG."""
  names = [f"{w}_{k}.JPEG" for w in SYNSETS for k in range(1, PER_CLASS + 1)]
  return [PNG_IMAGE if n == f"n02105855_{PER_CLASS}.JPEG" else n
          for n in names]


def train_value(file_name):
  """n02105855_7.JPEG -> a grey level unique within the train tar."""
  wnid, number = file_name[:-len(".JPEG")].split("_")
  return 60 * list(SYNSETS).index(wnid) + int(number) % 50


def write_tarballs(manual_dir):
  os.makedirs(manual_dir, exist_ok=True)
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"),
                    "w") as train:
    for wnid in SYNSETS:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as per_class:
        for name in [n for n in train_file_names() if n.startswith(wnid)]:
          encoder = tf.io.encode_png if name == PNG_IMAGE else tf.io.encode_jpeg
          add(per_class, name, grey(train_value(name), encoder))
      add(train, f"{wnid}.tar", inner.getvalue())
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"),
                    "w") as val:
    for i in range(1, NUM_VAL + 1):
      add(val, f"ILSVRC2012_val_{i:08d}.JPEG", grey(100 + 10 * i))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  manual = str(tmp_path_factory.mktemp("manual"))
  write_tarballs(manual)
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  # No --real_json and none in the manual dir: the packaged copy is used.
  proc = subprocess.run(
      [sys.executable, "-m", "big_vision_like.data.prepare_imagenet",
       "--manual_dir", manual, "--data_dir", data_dir,
       "--datasets", "imagenet2012,imagenet2012_real", "--skip_size_check"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return manual, data_dir, proc.stdout


def eval_examples(data_dir, name, split, pp, batch_size=4):
  """All real examples of the split through the eval pipeline."""
  batches, n = input_pipeline.make_eval_iterator(
      dict(name=name, split=split, data_dir=data_dir), pp, batch_size,
      process_index=0, process_count=1)
  out = []
  seen = 0
  for batch in batches:
    seen += 1
    for i in np.flatnonzero(batch["_mask"]):
      out.append({k: v[i] for k, v in batch.items()})
  assert seen == n
  for ex in out:
    ex["file_name"] = ex["file_name"].decode()
  return out


PP = "decode|resize(4)|keep('image', 'label', 'file_name')"


def test_cli_reports_what_it_prepared(prepared):
  _, _, stdout = prepared
  assert "imagenet2012: train=60, validation=6" in stdout
  assert "train[:99%]=59, train[99%:]=1" in stdout
  assert "imagenet2012_real: validation=6" in stdout


def test_imagenet2012_train_and_minival(prepared):
  _, data_dir, _ = prepared
  builder = tfds_source.get_builder("imagenet2012", data_dir)
  assert type(builder).__module__.startswith("tensorflow_datasets.")
  assert str(builder.info.version) == "5.1.0"
  train = eval_examples(data_dir, "imagenet2012", "train", PP)
  want = set(train_file_names())
  assert len(want) == 60 and PNG_IMAGE in want
  assert sorted(ex["file_name"] for ex in train) == sorted(want)
  for ex in train:
    assert ex["label"] == SYNSETS[ex["file_name"][:9]]
    # The pixels are the ones stored under this file name.
    assert abs(ex["image"].mean() - train_value(ex["file_name"])) <= 2
  # Conventional split: 99% to train, the last 1% as minival; disjoint.
  head = eval_examples(data_dir, "imagenet2012", imagenet_variants.TRAIN_SPLIT,
                       PP)
  minival = eval_examples(data_dir, "imagenet2012",
                          imagenet_variants.MINIVAL_SPLIT, PP)
  assert (len(head), len(minival)) == (59, 1)
  assert ({ex["file_name"] for ex in head} | {ex["file_name"] for ex in
                                               minival}) == want
  # TFDS's builder turned the one PNG in the train tar into a JPEG.
  ds = builder.as_dataset(split="train", decoders={
      "image": tfds.decode.SkipDecoding()})
  raw = {ex["file_name"].decode(): ex["image"] for ex in tfds.as_numpy(ds)}
  assert raw[PNG_IMAGE][:3] == b"\xff\xd8\xff"


def test_imagenet2012_validation_labels_by_file_name(prepared):
  _, data_dir, _ = prepared
  validation = eval_examples(data_dir, "imagenet2012", "validation", PP)
  assert sorted(ex["file_name"] for ex in validation) == [
      f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, NUM_VAL + 1)]
  wnids = imagenet_variants.class_wnids()
  val_wnids = imagenet_variants.validation_wnids()
  for ex in validation:
    i = int(ex["file_name"][15:23])
    assert ex["label"] == wnids.index(val_wnids[i - 1])
    assert abs(ex["image"].mean() - (100 + 10 * i)) <= 2
  by_name = {ex["file_name"]: ex["label"] for ex in validation}
  assert by_name["ILSVRC2012_val_00000003.JPEG"] == 230  # n02105855


def test_imagenet2012_real_sets_come_from_real_json(prepared):
  _, data_dir, _ = prepared
  pp = ("decode|resize(4)|onehot(1000, key='real_label', key_result='labels')"
        "|keep('labels', 'original_label', 'file_name')")
  examples = eval_examples(data_dir, "imagenet2012_real", "validation", pp)
  with open(REAL_JSON) as f:
    real = json.load(f)
  assert real[:5] == REAL_SETS
  got = {int(ex["file_name"][15:23]): ex for ex in examples}
  assert sorted(got) == list(range(1, NUM_VAL + 1))
  for i, ex in got.items():
    assert sorted(np.flatnonzero(ex["labels"])) == sorted(real[i - 1])
  assert not got[1]["labels"].any()  # Image 1's ReaL set is empty.
  assert sorted(np.flatnonzero(got[2]["labels"])) == [795, 970]
  assert got[3]["original_label"] == 230


def test_rerun_leaves_prepared_datasets_alone(prepared, tmp_path):
  _, data_dir, _ = prepared
  lines = []
  # Nothing to prepare, so the tarballs are not even needed.
  counts = prepare_imagenet.prepare(["imagenet2012"], str(tmp_path / "none"),
                                    data_dir, log=lines.append)
  assert counts == {"imagenet2012": {"train": 60, "validation": 6}}
  assert lines[0].startswith("imagenet2012: already prepared in ")


def test_missing_files_are_all_named_up_front(tmp_path):
  manual, data_dir = str(tmp_path / "manual"), str(tmp_path / "tfds")
  os.makedirs(manual)
  with pytest.raises(prepare_imagenet.MissingFilesError) as e:
    prepare_imagenet.prepare(
        ["imagenet2012", "imagenet2012_real", "imagenet2012_multilabel"],
        manual, data_dir)
  message = str(e.value)
  for name, size in [("ILSVRC2012_img_train.tar", "147,897,477,120"),
                     ("ILSVRC2012_img_val.tar", "6,744,924,160"),
                     ("human_accuracy_v3.0.0.json", "200,417,830")]:
    assert f"MISSING {name}" in message
    assert f"{size} bytes" in message
    assert f"Put it at {os.path.join(manual, name)}" in message
  assert "ILSVRC2012_img_test.tar" not in message  # Optional.
  assert "real.json" not in message  # The package ships it.
  assert ("https://storage.googleapis.com/brain-car-datasets/imagenet-mistakes"
          "/human_accuracy_v3.0.0.json") in message
  assert message.count("MISSING ILSVRC2012_img_val.tar") == 1
  assert not os.path.exists(data_dir)  # Nothing was started.


def test_wrong_files_are_caught_before_tfds_runs(tmp_path):
  manual = str(tmp_path / "manual")
  write_tarballs(manual)
  data_dir = str(tmp_path / "tfds")
  # Tiny tarballs are not the official size.
  with pytest.raises(prepare_imagenet.MissingFilesError) as e:
    prepare_imagenet.prepare(["imagenet2012"], manual, data_dir)
  assert "WRONG SIZE" in str(e.value) and "--skip_size_check" in str(e.value)
  # A real.json that is not the official one.
  bad = tmp_path / "real.json"
  bad.write_text(json.dumps([[1]] * 50_000)[:388_478].ljust(388_478))
  with pytest.raises(prepare_imagenet.MissingFilesError,
                     match="WRONG CHECKSUM"):
    prepare_imagenet.prepare(["imagenet2012_real"], manual, data_dir,
                             real_json=str(bad), check_sizes=False)
  # A val tar with a gap would shift every label after it.
  with tarfile.open(os.path.join(manual, "ILSVRC2012_img_val.tar"), "w") as t:
    for i in (1, 2, 4):
      add(t, f"ILSVRC2012_val_{i:08d}.JPEG", grey(i))
  with pytest.raises(prepare_imagenet.MissingFilesError) as e:
    prepare_imagenet.prepare(["imagenet2012"], manual, data_dir,
                             check_sizes=False)
  assert ("validation image 3 (in sorted order) is "
          "'ILSVRC2012_val_00000004.JPEG'") in str(e.value)
  assert not os.path.exists(data_dir)


def test_real_json_from_flag_or_manual_dir_before_the_packaged_copy(tmp_path):
  manual = tmp_path / "manual"
  write_tarballs(str(manual))
  locate = lambda **kw: prepare_imagenet.locate_files(
      ["imagenet2012_real"], str(manual), check_sizes=False, **kw)["real.json"]
  assert locate() == os.path.abspath(REAL_JSON)
  (manual / "real.json").write_bytes(open(REAL_JSON, "rb").read())
  assert locate() == str(manual / "real.json")
  # A wrong explicit path is an error, not silently the packaged copy.
  with pytest.raises(prepare_imagenet.MissingFilesError,
                     match="MISSING real.json: --real_json .*nope.json is not"):
    locate(real_json=str(tmp_path / "nope.json"))


def test_shell_wrapper_fails_clearly_without_tarballs(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  proc = subprocess.run(
      ["bash", os.path.join(REPO, "scripts", "prepare_imagenet.sh"),
       "--manual_dir", str(empty), "--data_dir", str(tmp_path / "tfds")],
      cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "MISSING ILSVRC2012_img_train.tar" in proc.stderr
  assert f"Put it at {empty}/ILSVRC2012_img_train.tar" in proc.stderr


@pytest.mark.parametrize("name", imagenet_variants.ILSVRC_VARIANTS)
def test_not_prepared_ilsvrc_variant_names_our_command(tmp_path, name):
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(tfds_source.DatasetNotPreparedError) as e:
    tfds_source.get_builder(name, data_dir)
  message = str(e.value)
  assert (f"python -m big_vision_like.data.prepare_imagenet --manual_dir "
          f"DIR_WITH_ILSVRC_TARBALLS --data_dir {data_dir} --datasets {name}"
          in message)
  assert "tfds build" not in message
  assert "ILSVRC2012_img_val.tar" in message
