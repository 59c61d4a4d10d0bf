"""Config files, `key=value` arguments and command-line overrides."""

import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from configs import common, default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, "configs", "default.py")


def _parse(*args):
    # config_flags finds `--config.x` overrides in the argv it is given (sys.argv by default).
    argv = ["train.py", *args]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", DEFAULT, flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flag_values(argv)
    return flag_values.config


def test_default_config_is_locked():
    config = default.get_config()
    assert config.is_locked
    with pytest.raises(AttributeError):
        config.no_such_key = 1


def test_command_line_overrides_typed_values():
    config = _parse(
        "--config.optimizer.learning_rate=0.5",
        "--config.model.dtype=bfloat16",
        "--config.input.crop_size=(64,96)",
    )
    assert config.optimizer.learning_rate == 0.5
    assert config.model.dtype == "bfloat16"
    assert tuple(config.input.crop_size) == (64, 96)
    # The default stays what the file says where nothing overrides it.
    assert config.train.steps == default.get_config().train.steps


def test_config_argument_selects_variant():
    config = _parse(f"--config={DEFAULT}:tiny,steps=4")
    assert config.dataset.config == "tiny"
    assert config.train.steps == 4


def test_unknown_override_key_is_an_error_naming_it():
    with pytest.raises(Exception, match="no_such_key"):
        _parse(f"--config={DEFAULT}", "--config.optimizer.no_such_key=1")


def test_train_py_rejects_unknown_key_before_any_work(tmp_path):
    # With no --config, train.py uses configs/default.py; overrides apply to it.
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "train.py"),
            "--config.optimizer.lr_typo=1",
            f"--workdir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "lr_typo" in result.stderr
    assert not (tmp_path / "run").exists()


def test_unknown_config_argument_is_an_error_naming_it():
    with pytest.raises(KeyError, match="bogus"):
        common.parse_arg("tiny,bogus=3", tiny=False, steps=0)


def test_parse_arg_keeps_default_types():
    args = common.parse_arg("steps=12,tiny", tiny=False, steps=0)
    assert args.steps == 12 and isinstance(args.steps, int)
    assert args.tiny is True
