"""benchmarks/zoo_shapes.py: trains tiny models through train_lib and writes the README's table."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def zoo():
    spec = importlib.util.spec_from_file_location(
        "zoo_shapes", os.path.join(ROOT, "benchmarks", "zoo_shapes.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_zoo_lists_every_tiny_model_and_pixel_mlp(zoo):
    from segjax.models.registry import MODELS

    names = zoo.zoo_models()
    assert "pixel_mlp" in names and "deeplabv3plus_tiny" in names
    assert set(names) == {n for n in MODELS if n.endswith("_tiny")} | {"pixel_mlp"}


def test_other_models_run_at_their_defaults_and_the_budget_is_the_same(zoo):
    from configs import default

    base = default.get_config()
    own = zoo.model_config(base, base.model.name, 7)
    other = zoo.model_config(base, "unet_tiny", 7)
    assert own.model.to_dict() == base.model.to_dict()
    assert other.model.name == "unet_tiny" and other.model.output_stride is None
    for c in (own, other):
        assert c.train.steps == c.train.eval_every == c.train.checkpoint_every == 7
        assert c.input.to_dict() == base.input.to_dict()
        assert c.optimizer.to_dict() == base.optimizer.to_dict()


README = """# title

text before

## Trained zoo

{begin}
| model | old header |
|---|---|
| `b_tiny` | old b | 2020-01-01 00:00 |
| `z_tiny` | old z | 2020-01-02 00:00 |

old baseline line
- 2020-01-01 00:00 UTC: `old command for b`
- 2020-01-02 00:00 UTC: `old command for z`
{end}

text after
"""


def test_merge_replaces_its_rows_keeps_the_others_and_their_notes(zoo):
    old = README.format(begin=zoo.BEGIN, end=zoo.END).split("\n")
    block = old[old.index(zoo.BEGIN) + 1 : old.index(zoo.END)]
    new_rows = {
        "b_tiny": "| `b_tiny` | new b | 2030-05-05 10:00 |",
        "a_tiny": "| `a_tiny` | new a | 2030-05-05 10:00 |",
    }
    note = "- 2030-05-05 10:00 UTC: `new command`"
    merged = zoo.merge_block(block, new_rows, note, "new baseline line")
    rows = [line for line in merged if zoo._row_model(line)]
    assert rows == [
        new_rows["a_tiny"],
        new_rows["b_tiny"],
        "| `z_tiny` | old z | 2020-01-02 00:00 |",
    ]
    # The note of the replaced rows goes; the one of the kept row stays.
    assert "- 2020-01-01 00:00 UTC: `old command for b`" not in merged
    assert merged[-2:] == ["- 2020-01-02 00:00 UTC: `old command for z`", note]
    assert "new baseline line" in merged and "old baseline line" not in merged


def test_writes_trained_rows_into_a_readme_copy(zoo, shapes_data_dir, tmp_path, monkeypatch):
    # Two steps of the smoke config through train_lib, bench and the FLOPs count.
    monkeypatch.setenv("SEGJAX_DATA_DIR", shapes_data_dir)
    readme = tmp_path / "README.md"
    readme.write_text(README.format(begin=zoo.BEGIN, end=zoo.END))
    out = tmp_path / "rows.json"
    args = ["--models", "pixel_mlp", "--steps", "2", "--config", "configs/default.py:tiny"]
    args += ["--bench_steps", "1", "--write", str(readme), "--json", str(out)]
    assert zoo.main(args) == 0  # pixel_mlp is the reference: not flagged
    text = readme.read_text()
    before, after = text.split(zoo.BEGIN)[0], text.split(zoo.END)[1]
    assert before == README.split("{begin}")[0] and after == README.split("{end}")[1]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["model"] == "pixel_mlp" and row["steps"] == 2
    assert 0 <= row["miou"] <= 1 and row["train_img_per_s"] > 0 and row["infer_img_per_s"] > 0
    assert row["params"] > 0 and row["gflops_512"] > 0 and row["train_peak_bytes"] > 0
    line = next(x for x in text.split("\n") if x.startswith("| `pixel_mlp` |"))
    assert f"{row['params']:,d}" in line and f"{100 * row['miou']:.2f}" in line
    assert "| `z_tiny` | old z |" in text and "| `b_tiny` |" in text
    assert "`python benchmarks/zoo_shapes.py --models pixel_mlp --steps 2" in text
    assert str(out) not in text  # the command under the table names no file of this machine
    assert "Always the majority class on segjax_shapes/tiny/validation" in text


def test_the_recorded_command_leaves_out_local_files(zoo):
    argv = ["--models", "a", "--json", "/x/rows.json", "--write", "README.md", "--workdir=/w"]
    assert zoo.public_args(argv) == ["--models", "a", "--write", "README.md"]


def test_no_markers_is_an_error_naming_them(zoo, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no table here\n")
    with pytest.raises(ValueError, match="zoo-table:begin"):
        zoo.write_table(str(readme), {}, "- note", "baseline")
    assert readme.read_text() == "# no table here\n"
