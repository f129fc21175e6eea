"""`config.profile`: window parsing, config errors, and a real trace on disk."""

import glob
import os

import pytest

from big_vision_like import config as config_lib
from big_vision_like import profiling
from big_vision_like import train as train_lib
from tests.helpers import tiny_config


@pytest.mark.parametrize("spec, start, window", [
    (None, 0, None), (0, 0, None), (False, 0, None),
    (5, 0, (2, 5)), (5, 100, (102, 5)),  # an int starts 2 steps into this run
    (dict(first_step=10, num_steps=3), 0, (10, 3)),
    (dict(num_steps=4), 7, (9, 4)),
    (dict(first_step=0), 0, (0, 5)),
])
def test_parse_windows(spec, start, window):
  assert profiling.parse(spec, start) == window


@pytest.mark.parametrize("spec, culprit", [
    (True, "config.profile=True"),
    (-1, "num_steps=-1"),
    (dict(first_step=-2, num_steps=1), "first_step=-2"),
    (dict(num_steps=0), "num_steps=0"),
    (dict(steps=3), "config.profile.steps"),
    ("abc", "config.profile='abc'"),
])
def test_bad_specs_name_the_key(spec, culprit):
  with pytest.raises(config_lib.ConfigError, match=culprit.replace("(", r"\(")):
    profiling.parse(spec, 0)


def test_profile_can_be_added_by_override_and_is_validated():
  config = config_lib.load_config("configs/fashion_vit.py:runlocal", ["profile=4"])
  assert config.profile == 4
  config = config_lib.load_config("configs/fashion_vit.py:runlocal", ["profile=-3"])
  with pytest.raises(config_lib.ConfigError, match="num_steps=-3"):
    config_lib.validate(config)


def test_training_writes_a_trace_for_tensorboard(fashion_mnist_data_dir, tmp_path):
  config = tiny_config(fashion_mnist_data_dir, total_steps=5, log_training_steps=5,
                       ckpt_steps=5, profile=dict(first_step=1, num_steps=2))
  workdir = str(tmp_path / "run")
  train_lib.train(config, workdir)
  traces = glob.glob(os.path.join(workdir, "tensorboard", "plugins", "profile", "*",
                                  "*.xplane.pb"))
  assert len(traces) == 1
  data = open(traces[0], "rb").read()
  # The step annotations of the traced steps are in the trace.
  assert b"train" in data and len(data) > 10_000


def test_window_after_the_end_of_a_resumed_run_traces_nothing(fashion_mnist_data_dir,
                                                              tmp_path):
  config = tiny_config(fashion_mnist_data_dir, total_steps=3, log_training_steps=3,
                       ckpt_steps=3, profile=dict(first_step=50, num_steps=2))
  workdir = str(tmp_path / "run")
  train_lib.train(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "tensorboard", "plugins"))
