"""Config loading, `:arg` strings, overrides and start-up validation errors."""

import pytest

from big_vision_like import config as config_lib
from big_vision_like import registry
from big_vision_like import experiment

MAIN = "configs/fashion_vit.py"


def test_parse_arg_types_and_flags():
  arg = config_lib.parse_arg("runlocal,epochs=3,variant=B/16,lr=1e-3",
                             runlocal=False, epochs=1, variant="S/16", lr=0.1, name=None)
  assert arg.runlocal is True
  assert arg.epochs == 3 and isinstance(arg.epochs, int)
  assert arg.variant == "B/16"
  assert arg.lr == pytest.approx(1e-3)
  assert arg.name is None


def test_parse_arg_unknown_key_names_it():
  with pytest.raises(config_lib.ConfigError, match=r"'epohcs'.*Did you mean 'epochs'"):
    config_lib.parse_arg("epohcs=3", epochs=1)


def test_parse_arg_bad_type():
  with pytest.raises(config_lib.ConfigError, match="epochs"):
    config_lib.parse_arg("epochs=many", epochs=1)


def test_load_config_with_arg_and_overrides():
  config = config_lib.load_config(MAIN + ":epochs=3,batch=64",
                                  ["lr=0.01", "model.depth=2", "optax.b2=0.95"])
  assert config.total_epochs == 3
  assert config.input.batch_size == 64
  assert config.lr == 0.01
  assert config.model.depth == 2
  assert config.optax.b2 == 0.95
  config_lib.validate(config)


def test_override_unknown_key_fails_with_known_keys():
  # config.model.X may add a model field; a typo still fails, at model build.
  config = config_lib.load_config(MAIN, ["model.dpeth=2", "model.drop_path=0.1"])
  assert config.model.drop_path == 0.1
  with pytest.raises(config_lib.ConfigError, match=r"config\.model\.dpeth.*depth"):
    experiment.build_model(config)
  with pytest.raises(config_lib.ConfigError, match=r"config\.optax\.b3.*Known keys: b2"):
    config_lib.load_config(MAIN, ["optax.b3=0.9"])
  with pytest.raises(config_lib.ConfigError, match=r"config\.inptu"):
    config_lib.load_config(MAIN, ["inptu.batch_size=2"])
  with pytest.raises(config_lib.ConfigError, match="key.path=value"):
    config_lib.load_config(MAIN, ["lr"])


def test_missing_config_file():
  with pytest.raises(config_lib.ConfigError, match="not_there.py"):
    config_lib.load_config("configs/not_there.py")


def test_unknown_top_level_key():
  config = config_lib.load_config(MAIN)
  config.totl_steps = 10
  with pytest.raises(config_lib.ConfigError, match=r"config\.totl_steps.*'total_steps'"):
    config_lib.validate(config)


def test_unknown_input_and_eval_keys():
  config = config_lib.load_config(MAIN)
  config.input.batchsize = 3
  with pytest.raises(config_lib.ConfigError, match=r"config\.input\.batchsize"):
    config_lib.validate(config)
  config = config_lib.load_config(MAIN)
  config.evals.test.log_stpes = 3
  with pytest.raises(config_lib.ConfigError, match=r"config\.evals\.test\.log_stpes"):
    config_lib.validate(config)


def test_unknown_model_loss_evaluator_names_list_known_ones():
  config = config_lib.load_config(MAIN)
  config.model_name = "vitt"
  with pytest.raises(registry.UnknownNameError, match=r"'vitt'.*'vit'.*resnet"):
    config_lib.validate(config)
  config = config_lib.load_config(MAIN)
  config.loss = "softmax"
  with pytest.raises(registry.UnknownNameError, match=r"loss 'softmax'.*softmax_xent"):
    config_lib.validate(config)
  config = config_lib.load_config(MAIN)
  config.evals.test.type = "clasification"
  with pytest.raises(config_lib.ConfigError,
                     match=r"config\.evals\.test\.type.*'classification'"):
    config_lib.validate(config)


def test_unknown_pp_op_fails_at_validation():
  config = config_lib.load_config(MAIN)
  config.input.pp = "decode|resise(32)|value_range(-1, 1)"
  with pytest.raises(ValueError, match=r"resise.*resize"):
    config_lib.validate(config)


def test_unknown_model_field_names_it():
  config = config_lib.load_config(MAIN)
  config.model.widht = 3
  with pytest.raises(config_lib.ConfigError, match=r"config\.model\.widht.*width"):
    experiment.build_model(config)


@pytest.mark.parametrize("spec", [
    "configs/fashion_vit.py", "configs/fashion_vit.py:runlocal",
    "configs/fashion_resnet.py", "configs/fashion_resnet.py:runlocal",
    "configs/vit_i1k.py:variant=S/16", "configs/vit_i1k.py:variant=B/16",
    "configs/vit_i1k.py:runlocal", "configs/vit_i1k.py:variant=B/16,sharding=fsdp",
    "configs/vit_i1k.py:variant=B/16,sharding=fsdp_tp",
    "configs/bit_i1k.py", "configs/bit_i1k.py:runlocal",
    "configs/fashion_contrastive.py", "configs/fashion_contrastive.py:loss=clip",
    "configs/fashion_contrastive.py:loss=chunked_siglip,runlocal",
    "configs/fashion_contrastive.py:text=bytes,epochs=4",
    "configs/fashion_lit.py", "configs/fashion_lit.py:runlocal",
    "configs/image_text_b16.py", "configs/image_text_b16.py:loss=clip",
    "configs/image_text_b16.py:runlocal", "configs/image_text_b16.py:lit_init=/ckpt"])
def test_all_configs_validate(spec):
  config = config_lib.load_config(spec)
  config_lib.validate(config)
  experiment.build_model(config)


def test_vit_i1k_recipes():
  s16 = config_lib.load_config("configs/vit_i1k.py:variant=S/16")
  b16 = config_lib.load_config("configs/vit_i1k.py:variant=B/16")
  assert (s16.total_epochs, s16.input.batch_size) == (90, 1024)
  assert (b16.total_epochs, b16.input.batch_size) == (300, 4096)
  local = config_lib.load_config("configs/vit_i1k.py:runlocal")
  assert local.total_steps == 10 and local.input.batch_size == 8
  with pytest.raises(ValueError, match="variant"):
    config_lib.load_config("configs/vit_i1k.py:variant=Q/16")


def test_cli_distributed_flags_go_together(capsys):
  with pytest.raises(SystemExit):
    config_lib.parse_cli(["--config", MAIN, "--workdir", "/tmp/x", "--num_processes", "2"])
  assert "go together" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    config_lib.parse_cli(["--config", MAIN, "--workdir", "/tmp/x", "--lr=3"])
  assert "unrecognized argument '--lr=3'" in capsys.readouterr().err


# --- Every key typed, honoured or refused (before anything is written) --------


@pytest.mark.parametrize("override,message", [
    ("input.batch_size=abc", r"config\.input\.batch_size='abc' must be int, not str"),
    ("seed=1.5", r"config\.seed=1\.5 must be int, not float"),
    ("lr=abc", r"config\.lr='abc' must be float, not str"),
    ("ckpt_async=1", r"config\.ckpt_async=1 must be bool, not int"),
    ("lr=1e999", r"config\.lr=inf must be finite"),
    ("task='detection'", r"config\.task: Unknown task 'detection'.*classification, "
                         r"image_text"),
    ("loss='clip'", r"config\.loss='clip' is a loss of task 'image_text'; task "
                    r"'classification' \(model 'vit'\) trains with one of sigmoid_xent, "
                    r"softmax_xent"),
    ("evals.test.save_predicitons=True", r"config\.evals\.test\.save_predicitons.*"
                                         r"'save_predictions'"),
])
def test_types_and_names_are_checked_naming_the_key(override, message):
  config = config_lib.load_config(MAIN, [override])
  with pytest.raises(ValueError, match=message):
    config_lib.resolve(config)


def test_bad_value_writes_nothing(tmp_path):
  from big_vision_like import train as train_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(MAIN + ":runlocal", ["lr=abc"])
  with pytest.raises(config_lib.ConfigError, match=r"config\.lr='abc'"):
    train_lib.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_override_errors_name_the_key():
  with pytest.raises(config_lib.ConfigError, match=r"config\.input\.pp is a str, not a section"):
    config_lib.load_config(MAIN, ["input.pp.x=1"])
  with pytest.raises(config_lib.ConfigError, match=r"config argument batch='12\.5' is not of type int"):
    config_lib.load_config(MAIN + ":batch=12.5")
  assert config_lib.load_config(MAIN + ":batch=64.0").input.batch_size == 64
  # A float default takes an int as that float.
  assert config_lib.load_config(MAIN + ":epochs=3").total_epochs == 3.0


def test_cli_space_form_and_evaluator_options():
  config, workdir = config_lib.parse_cli([
      "--config", MAIN, "--workdir", "/tmp/x", "--config.lr", "0.01",
      "--config.evals.test.save_predictions=True", "--config.init_head_bias", "-6.9"])
  assert (config.lr, workdir, config.init_head_bias) == (0.01, "/tmp/x", -6.9)
  assert config.evals.test.save_predictions is True
  config_lib.resolve(config)
  with pytest.raises(SystemExit):
    config_lib.parse_cli(["--config", MAIN, "--workdir", "/tmp/x", "--config.lr"])


def test_evals_removed_or_selected():
  config = config_lib.load_config(MAIN, ["evals.test=None"])
  assert "test" not in config.evals
  config_lib.resolve(config)
  config = config_lib.load_config("configs/vit_i1k.py:evals=val+real")
  assert set(config.evals) == {"val", "real"}
  assert "reference" not in config.evals.real
  config_lib.validate(config)
  assert len(config_lib.load_config("configs/vit_i1k.py").evals) == 12
  assert list(config_lib.load_config("configs/bit_i1k.py:runlocal,evals=minival").evals) == [
      "minival"]
  zero = config_lib.load_config("configs/image_text_b16.py:evals=real+a")
  assert [ev.type for ev in zero.evals.values()] == ["zeroshot", "zeroshot"]
  with pytest.raises(ValueError, match=r"evals='val\+reel'.*unknown scorecard evals \['reel'\]"):
    config_lib.load_config("configs/vit_i1k.py:evals=val+reel")


def test_duration_override_replaces_the_files_unit_and_defaults_fill_in():
  config = config_lib.resolve(config_lib.load_config(MAIN, ["total_steps=3"]))
  assert (config.total_steps, config.total_epochs) == (3, None)
  # Defaults from the one table, readable as attributes.
  assert (config.grad_accum_steps, config.keep_ckpt_last, config.input.order) == (
      1, 3, "global")
  assert config.mesh == [("data", -1)] or list(map(tuple, config.mesh)) == [("data", -1)]
  config = config_lib.load_config(MAIN)
  config.total_steps = 3
  with pytest.raises(config_lib.ConfigError, match="only one of total_steps, total_epochs"):
    config_lib.validate(config)


def test_num_classes_is_honoured_or_refused():
  config = config_lib.load_config(MAIN)
  del config.model["num_classes"]
  config.num_classes = 7
  assert config_lib.resolve(config).model.num_classes == 7
  assert experiment.build_model(config).num_classes == 7
  config.model.num_classes = 10
  with pytest.raises(config_lib.ConfigError, match=r"config\.num_classes=7 disagrees with "
                                                   r"config\.model\.num_classes=10"):
    config_lib.validate(config)
  config = config_lib.load_config("configs/fashion_contrastive.py:runlocal")
  config.num_classes = 7
  with pytest.raises(config_lib.ConfigError, match=r"model 'two_tower' has no num_classes"):
    config_lib.validate(config)


def test_readme_config_table_is_generated_from_the_key_table():
  table = config_lib.markdown_table()
  assert "| `init_head_bias` | float | `None` |" in table
  assert "| `input.batch_size` | int | required |" in table


def test_contrastive_config_refuses_an_unknown_text_side():
  with pytest.raises(ValueError, match=r"fashion_contrastive: text='words' is unknown; "
                                       r"known: \['bpe', 'bytes'\]"):
    config_lib.load_config("configs/fashion_contrastive.py:text=words")


def test_eval_text_pp_fails_at_validation_naming_the_op():
  config = config_lib.load_config("configs/fashion_contrastive.py:runlocal")
  name = next(n for n, ev in config.evals.items() if "pp_txt" in ev)
  config.evals[name].pp_txt = "tokenise(12)"
  with pytest.raises(ValueError, match=r"tokenise.*tokenize"):
    config_lib.validate(config)
