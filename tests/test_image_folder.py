"""A user's folder of class sub-folders becomes a TFDS dataset we train from.

The folders are real files written here: JPEGs (stored byte-for-byte), PNGs
(re-encoded as JPEG), stray non-image files, corrupt images. Each class has
its own colour, so labels can be checked against pixels after the whole
input pipeline.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from big_vision_like.data import image_folder, input_pipeline, tfds_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Class -> the channel that is bright in its images (classes sort this way).
CLASSES = {"cat": 0, "dog": 1, "zebra": 2}


def coloured(channel, h, w, shade=0):
  image = np.full((h, w, 3), 30 + shade, np.uint8)
  image[..., channel] = 220
  return image


def write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def jpeg(image):
  return tf.io.encode_jpeg(image, quality=90).numpy()


def png(image):
  return tf.io.encode_png(image).numpy()


def make_flat_folder(root):
  """cat: 4 JPEG + 1 PNG, dog: 3 JPEG (one nested) + RGBA PNG, zebra: 3."""
  for name, channel in CLASSES.items():
    for k in range(3):
      write(os.path.join(root, name, f"{name}_{k}.jpg"),
            jpeg(coloured(channel, 20 + k, 24, shade=k)))
  write(os.path.join(root, "cat", "cat_3.JPEG"), jpeg(coloured(0, 17, 19)))
  write(os.path.join(root, "cat", "cat_png.png"), png(coloured(0, 16, 16)))
  rgba = np.concatenate([coloured(1, 18, 18), np.full((18, 18, 1), 128,
                                                      np.uint8)], -1)
  write(os.path.join(root, "dog", "more", "dog_rgba.PNG"), png(rgba))
  # Not images of a class: ignored with a warning.
  write(os.path.join(root, "dog", "notes.txt"), b"not an image")
  write(os.path.join(root, "zebra", ".DS_Store"), b"\0\0\0\1Bud1")
  write(os.path.join(root, "zebra", "._zebra_0.jpg"), b"AppleDouble junk")
  write(os.path.join(root, "README.md"), b"my data")


def read_all(data_dir, name, split):
  builder = tfds.builder(name, data_dir=data_dir)
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  return [{k: (v.decode() if isinstance(v, bytes) and k == "file_name" else v)
           for k, v in ex.items()} for ex in tfds.as_numpy(ds)]


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("flowers"))
  make_flat_folder(root)
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  with pytest.warns(image_folder.IgnoredFilesWarning) as record:
    counts = image_folder.prepare_image_folder(
        root, "my_flowers", data_dir, val_fraction=0.25, seed=3,
        num_shards=2)
  return root, data_dir, counts, [str(w.message) for w in record]


def test_flat_folder_becomes_a_tfds_dataset(flat):
  root, data_dir, counts, warned = flat
  # 12 images; per class round(0.25 * n) (>= 1) go to validation:
  # cat 5 -> 1, dog 4 -> 1, zebra 3 -> 1.
  assert counts == {"train": 9, "validation": 3}
  assert "Ignored 4 file(s)" in warned[0]
  for f in ("README.md", "dog/notes.txt", "zebra/.DS_Store",
            "zebra/._zebra_0.jpg"):
    assert f in warned[0]

  builder = tfds_source.get_builder("my_flowers", data_dir)
  assert builder.info.features["label"].names == ["cat", "dog", "zebra"]
  assert builder.info.splits["train"].num_shards == 2
  examples = read_all(data_dir, "my_flowers", "train") + read_all(
      data_dir, "my_flowers", "validation")
  names = [ex["file_name"] for ex in examples]
  expected = sorted(
      os.path.relpath(os.path.join(d, f), root) for d, _, files in
      os.walk(root) for f in files
      if f.lower().endswith((".jpg", ".jpeg", ".png")) and f[0] != ".")
  assert sorted(names) == expected and len(expected) == 12
  # Every class has exactly one validation image.
  validation = read_all(data_dir, "my_flowers", "validation")
  assert sorted(ex["label"] for ex in validation) == [0, 1, 2]
  for ex in examples:
    path = os.path.join(root, ex["file_name"])
    assert ex["label"] == CLASSES[ex["file_name"].split("/")[0]]
    with open(path, "rb") as f:
      original = f.read()
    assert ex["image"][:3] == b"\xff\xd8\xff"  # Always JPEG.
    if path.lower().endswith((".jpg", ".jpeg")):
      assert ex["image"] == original  # Not re-encoded.
    else:  # PNG -> JPEG, same pixels up to JPEG error, alpha dropped.
      want = tf.io.decode_image(original, channels=3).numpy()
      got = tf.io.decode_jpeg(ex["image"]).numpy()
      assert got.shape == want.shape
      assert np.abs(got.astype(int) - want).max() <= 8


def test_import_is_deterministic_and_shuffled(flat, tmp_path):
  root, data_dir, _, _ = flat
  with pytest.warns(image_folder.IgnoredFilesWarning):
    image_folder.prepare_image_folder(root, "my_flowers", str(tmp_path),
                                      val_fraction=0.25, seed=3, num_shards=2)
  for split in ("train", "validation"):
    first = read_all(data_dir, "my_flowers", split)
    again = read_all(str(tmp_path), "my_flowers", split)
    assert [e["file_name"] for e in first] == [e["file_name"] for e in again]
    assert [e["image"] for e in first] == [e["image"] for e in again]
  order = [e["file_name"] for e in read_all(data_dir, "my_flowers", "train")]
  assert order != sorted(order)  # Not class after class.
  with pytest.raises(FileExistsError, match="already exists"):
    image_folder.prepare_image_folder(root, "my_flowers", str(tmp_path))


def test_train_iterator_trains_from_the_folder(flat):
  _, data_dir, _, _ = flat
  pp = ("decode|resize(12)|value_range(0, 1)|"
        "onehot(3, key='label', key_result='labels')|keep('image', 'labels')")
  it = input_pipeline.make_train_iterator(
      dict(name="my_flowers", split="train", data_dir=data_dir), pp, 4,
      seed=0, process_index=0, process_count=1)
  assert it.num_examples == 9
  for _ in range(5):  # More than an epoch.
    batch = next(it)
    assert batch["image"].shape == (4, 12, 12, 3)
    # The bright channel of each image is its class.
    bright = batch["image"].mean(axis=(1, 2)).argmax(-1)
    np.testing.assert_array_equal(bright, batch["labels"].argmax(-1))


def test_split_folders_share_one_label_space(tmp_path):
  root = str(tmp_path / "src")
  for split, names in (("train", ["cat", "dog", "zebra"]), ("val", ["dog"]),
                       ("test", ["zebra", "cat"])):
    for name in names:
      write(os.path.join(root, split, name, "a.jpg"),
            jpeg(coloured(CLASSES[name], 10, 10)))
  counts = image_folder.prepare_image_folder(root, "animals",
                                             str(tmp_path / "tfds"))
  assert counts == {"test": 2, "train": 3, "validation": 1}
  builder = tfds_source.get_builder("animals", str(tmp_path / "tfds"))
  assert builder.info.features["label"].names == ["cat", "dog", "zebra"]
  validation = read_all(str(tmp_path / "tfds"), "animals", "validation")
  assert [(e["file_name"], e["label"]) for e in validation] == [
      ("val/dog/a.jpg", 1)]
  test = read_all(str(tmp_path / "tfds"), "animals", "test")
  assert sorted((e["file_name"], e["label"]) for e in test) == [
      ("test/cat/a.jpg", 0), ("test/zebra/a.jpg", 2)]
  with pytest.raises(image_folder.ImageFolderError, match="already has a va"):
    image_folder.prepare_image_folder(root, "animals2", str(tmp_path / "t2"),
                                      val_fraction=0.5)


def make_corrupt_folder(root):
  good = jpeg(coloured(0, 10, 10))
  write(os.path.join(root, "cat", "ok.jpg"), good)
  write(os.path.join(root, "cat", "noise.jpg"), b"\x00garbage" * 10)
  write(os.path.join(root, "dog", "ok.jpg"), jpeg(coloured(1, 10, 10)))
  write(os.path.join(root, "dog", "truncated.jpg"), good[:len(good) // 2])
  write(os.path.join(root, "dog", "empty.png"), b"")


def test_corrupt_images_fail_naming_each_file(tmp_path):
  root = str(tmp_path / "src")
  make_corrupt_folder(root)
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(image_folder.ImageFolderError) as e:
    image_folder.prepare_image_folder(root, "broken", data_dir)
  message = str(e.value)
  assert "3 image file(s) cannot be decoded" in message
  for f in ("cat/noise.jpg", "dog/truncated.jpg", "dog/empty.png"):
    assert os.path.join(root, f) in message
  assert "ok.jpg" not in message
  assert not os.path.exists(os.path.join(data_dir, "broken"))  # Not written.

  with pytest.warns(image_folder.IgnoredFilesWarning, match="Skipped 3"):
    counts = image_folder.prepare_image_folder(root, "broken", data_dir,
                                               skip_corrupt=True)
  assert counts == {"train": 2}
  assert sorted(e["file_name"] for e in read_all(data_dir, "broken",
                                                 "train")) == [
      "cat/ok.jpg", "dog/ok.jpg"]


def test_layout_errors_are_clear(tmp_path):
  data_dir = str(tmp_path / "tfds")
  empty_root = tmp_path / "nothing"
  empty_root.mkdir()
  with pytest.raises(image_folder.ImageFolderError, match="No class folders"):
    image_folder.prepare_image_folder(str(empty_root), "x", data_dir)
  root = str(tmp_path / "src")
  write(os.path.join(root, "cat", "a.jpg"), jpeg(coloured(0, 8, 8)))
  write(os.path.join(root, "dog", "readme.txt"), b"no images here")
  with pytest.raises(image_folder.ImageFolderError) as e:
    image_folder.prepare_image_folder(root, "x", data_dir)
  assert "with no" in str(e.value) and os.path.join(root, "dog") in str(
      e.value)
  with pytest.raises(image_folder.ImageFolderError, match="registered TFDS"):
    image_folder.prepare_image_folder(root, "mnist", data_dir)
  with pytest.raises(image_folder.ImageFolderError, match="not valid"):
    image_folder.prepare_image_folder(root, "My-Data", data_dir)
  mixed = str(tmp_path / "mixed")
  write(os.path.join(mixed, "train", "cat", "a.jpg"), jpeg(coloured(0, 8, 8)))
  write(os.path.join(mixed, "dog", "a.jpg"), jpeg(coloured(1, 8, 8)))
  with pytest.raises(image_folder.ImageFolderError, match="mixes split"):
    image_folder.prepare_image_folder(mixed, "x", data_dir)


def test_unimported_folder_name_hints_at_the_import_command(tmp_path, flat):
  _, data_dir, _, _ = flat
  with pytest.raises(tfds_source.UnknownDatasetError) as e:
    tfds_source.get_builder("my_flower", data_dir)
  message = str(e.value)
  assert (f"python -m big_vision_like.data.image_folder --src "
          f"DIR_OF_CLASS_FOLDERS --name my_flower --data_dir {data_dir}"
          in message)
  assert "Did you mean 'my_flowers'?" in message  # Imported ones are known.


def test_command_line_import(tmp_path):
  root = str(tmp_path / "src")
  for name, channel in CLASSES.items():
    write(os.path.join(root, name, "a.png"), png(coloured(channel, 9, 9)))
  data_dir = str(tmp_path / "tfds")
  proc = subprocess.run(
      [sys.executable, "-m", "big_vision_like.data.image_folder", "--src",
       root, "--name", "cli_ds", "--data_dir", data_dir], cwd=REPO,
      capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "cli_ds: wrote" in proc.stdout and "train=3" in proc.stdout
  builder = tfds_source.get_builder("cli_ds", data_dir)
  assert builder.info.splits["train"].num_examples == 3
  # A second import under the same name fails cleanly (exit 2, message).
  proc = subprocess.run(
      [sys.executable, "-m", "big_vision_like.data.image_folder", "--src",
       root, "--name", "cli_ds", "--data_dir", data_dir], cwd=REPO,
      capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "already exists" in proc.stderr
