"""Test set-up: 8 simulated CPU devices so that sharding tests run on any machine.

XLA reads the flag once, when jax first initialises its backends, so it is set here,
before any test module imports jax.
"""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's persistent compilation cache, fresh for each run (so nothing stale is ever read):
# many tests compile the same programs (the smoke config's train step in train_lib,
# resume, reliability and CLI tests, and in the subprocesses of the multi-process tests,
# which inherit the variable), and a hit replaces a compilation of seconds by a file
# read. Programs compiling in under half a second are not worth the write.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="segjax-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import pytest


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
    """A data dir holding the `tiny` segjax_shapes dataset, prepared once per session."""
    from segjax.data.builders import segjax_shapes

    data_dir = str(tmp_path_factory.mktemp("datasets"))
    segjax_shapes.prepare(data_dir, "tiny")
    return data_dir


@pytest.fixture
def tiny_config(shapes_data_dir):
    """configs/default.py:tiny reading the session's prepared dataset (unlocked copy)."""
    from configs import default

    config = default.get_config("tiny")
    with config.unlocked():
        config.dataset.data_dir = shapes_data_dir
    return config


@pytest.fixture(scope="session")
def eval_cli():
    """eval.py as a module (its absl flags defined once per session)."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("segjax_eval_cli", os.path.join(root, "eval.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def panoptic_data_dir(tmp_path_factory):
    """A data dir holding the `tiny` segjax_shapes_panoptic dataset, prepared once."""
    from segjax.data.builders import segjax_shapes_panoptic

    data_dir = str(tmp_path_factory.mktemp("panoptic_datasets"))
    segjax_shapes_panoptic.prepare(data_dir, "tiny")
    return data_dir
