"""Multi-band images: TIFF reading, per-band statistics, the folder builder on 4- and
12-band tiles, resolving `config.model.in_channels` / `config.input.mean,std`, and a
tiny model trained, evaluated and predicting files on them through the shared loop."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from configs import common
from segjax import config_check
from segjax.data import audit, bands, datasets, transforms
from segjax.data.builders import folder, from_files

H, W = 24, 32


def _tiff(image: np.ndarray, *, planar: bool = False) -> bytes:
    buf = io.BytesIO()
    if image.shape[-1] == 1:  # one band: a plain greyscale page
        tifffile.imwrite(buf, image[..., 0], photometric="minisblack")
    elif planar:  # bands first, as many GeoTIFFs are written
        tifffile.imwrite(buf, np.moveaxis(image, -1, 0), planarconfig="separate")
    else:
        tifffile.imwrite(buf, image, photometric="minisblack", planarconfig="contig")
    return buf.getvalue()


def _tile(rng, channels: int, dtype: str) -> np.ndarray:
    if dtype == "uint16":  # reflectances: a large offset against a small spread
        return rng.integers(20000, 21000, (H, W, channels)).astype(np.uint16)
    if dtype == "float32":
        return (rng.standard_normal((H, W, channels)) * 3 + 10).astype(np.float32)
    return rng.integers(0, 256, (H, W, channels)).astype(np.uint8)


def _write_folder(root, images: dict[str, bytes], labels: dict[str, np.ndarray], classes=3):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("\n".join(f"c{k}" for k in range(classes)))
    for name, data in images.items():
        with open(os.path.join(root, "images", name), "wb") as f:
            f.write(data)
    for stem, label in labels.items():
        with open(os.path.join(root, "masks", stem + ".tif"), "wb") as f:
            f.write(_tiff(label.astype(np.uint8)[..., None]))
    return str(root)


def _band_folder(root, rng, channels: int, dtype: str, n: int = 6):
    """n tiles whose label is where band 0 is above its median (learnable from the bands)."""
    tiles, images, labels = {}, {}, {}
    for k in range(n):
        tile = _tile(rng, channels, dtype)
        label = (tile[..., 0] > np.median(tile[..., 0])).astype(np.uint8)
        label[0, :3] = 255
        tiles[f"t{k}"] = tile
        images[f"t{k}.tif"] = _tiff(tile, planar=k % 2 == 1)
        labels[f"t{k}"] = label
    with open(_write_folder(root, images, labels, classes=2) + "/train.txt", "w") as f:
        f.write("\n".join(f"t{k}" for k in range(n - 2)))
    with open(os.path.join(root, "val.txt"), "w") as f:
        f.write("\n".join(f"t{k}" for k in range(n - 2, n)))
    return str(root), tiles, labels


def test_band_stats_match_numpy():
    rng = np.random.default_rng(0)
    images = [
        rng.integers(60000, 60010, (7, 5, 4)).astype(np.float64),
        rng.integers(0, 65535, (3, 9, 4)).astype(np.float64),
        np.full((2, 2, 4), 60004.0),
    ]
    images[2][0, 0, 1] = np.nan  # skipped
    stats = bands.BandStats(4)
    for image in images:
        stats.add(image)
    for c in range(4):
        pixels = np.concatenate([im[..., c].ravel() for im in images])
        pixels = pixels[np.isfinite(pixels)]
        assert stats.count[c] == pixels.size
        np.testing.assert_allclose(stats.mean[c], pixels.mean(), rtol=1e-12)
        np.testing.assert_allclose(stats.std[c], pixels.std(), rtol=1e-9)
    constant = bands.BandStats(1)
    constant.add(np.full((4, 4, 1), 7.0))
    assert constant.std == (1e-6,)  # divides by a tiny number, never by zero


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32", "int16"])
@pytest.mark.parametrize("planar", [False, True])
def test_read_bands_layouts_and_dtypes(dtype, planar):
    rng = np.random.default_rng(1)
    image = rng.integers(-100 if dtype == "int16" else 0, 200, (H, W, 5)).astype(dtype)
    got = from_files.read_bands(_tiff(image, planar=planar), "x.tif")
    assert got.shape == (H, W, 5)
    assert got.dtype == (np.float32 if dtype == "int16" else np.dtype(dtype))
    np.testing.assert_array_equal(got, image.astype(got.dtype))
    with pytest.raises(ValueError, match=r"^y\.tif: cannot read as TIFF"):
        from_files.read_bands(b"not a tiff", "y.tif")


@pytest.mark.parametrize(("channels", "dtype"), [(4, "uint16"), (12, "float32")])
def test_folder_prepares_band_tiles_with_their_statistics(tmp_path, channels, dtype):
    rng = np.random.default_rng(channels)
    manual, tiles, labels = _band_folder(tmp_path / "m", rng, channels, dtype)
    builder = folder.prepare(tmp_path / "data", "bands", manual)
    meta = builder.info.metadata
    assert meta["image_channels"] == channels and meta["image_dtype"] == dtype
    source = builder.as_data_source("train")
    for i in range(len(source)):
        record = source[i]
        stem = record["id"].decode()
        assert record["image"].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(record["image"], tiles[stem])  # stored losslessly
        np.testing.assert_array_equal(record["label"][..., 0], labels[stem])
    train = np.stack([tiles[f"t{k}"] for k in range(4)]).astype(np.float64)
    np.testing.assert_allclose(meta["band_mean"], train.mean((0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(meta["band_std"], train.std((0, 1, 2)), rtol=1e-6)
    info = bands.image_info(meta)
    assert info.channels == channels and not info.is_rgb8


def test_folder_band_mismatch_names_the_file(tmp_path):
    rng = np.random.default_rng(3)
    label = np.zeros((H, W))
    images = {
        "a.tif": _tiff(_tile(rng, 4, "uint16")),
        "b.tif": _tiff(_tile(rng, 3, "uint16")),
        "c.tif": _tiff(_tile(rng, 4, "uint16")),
    }
    manual = _write_folder(tmp_path / "m", images, {s: label for s in "abc"})
    with pytest.raises(
        ValueError,
        match=r"b\.tif: a 3-band uint16 image, but the first image .*a\.tif is a 4-band uint16",
    ):
        folder.prepare(tmp_path / "d", "x", manual)
    # The audit reads the folder as prepare does, and names the file among its problems.
    problems = [p for split in audit.audit_folder(manual) for p in split.problems]
    assert len(problems) == 1 and "b.tif: a 3-band uint16 image" in problems[0], problems
    images["b.tif"] = _tiff(_tile(rng, 4, "float32"))  # same count, other dtype
    manual = _write_folder(tmp_path / "m2", images, {s: label for s in "abc"})
    with pytest.raises(ValueError, match=r"b\.tif: a 4-band float32 image, but"):
        folder.prepare(tmp_path / "d2", "x", manual)
    images["b.tif"] = _tiff(_tile(rng, 4, "uint16"))
    manual = _write_folder(tmp_path / "m3", images, {s: label for s in "abc"})
    with open(os.path.join(manual, "masks", "c.tif"), "wb") as f:
        f.write(_tiff(np.zeros((H, W, 2), np.uint8)))
    with pytest.raises(ValueError, match=r"c\.tif: a mask TIFF must have one band"):
        folder.prepare(tmp_path / "d3", "x", manual)


def _folder_config(data_dir, **changes):
    c = common.base_config()
    c.dataset.name = "folder"
    c.dataset.config = "bands"
    c.dataset.data_dir = str(data_dir)
    c.dataset.num_classes = 2
    for key, value in changes.items():
        section, name = key.split(".")
        c[section][name] = value
    return c


def test_resolve_inputs_takes_bands_and_statistics_from_the_dataset(tmp_path):
    manual, tiles, _ = _band_folder(tmp_path / "m", np.random.default_rng(4), 4, "uint16")
    builder = folder.prepare(tmp_path / "data", "bands", manual)
    meta = builder.info.metadata
    config = _folder_config(tmp_path / "data")
    resolved = datasets.resolve_inputs(config)
    assert resolved.model.in_channels == 4 and resolved.input.norm_stats == "config"
    assert tuple(resolved.input.mean) == tuple(meta["band_mean"])
    assert tuple(resolved.input.std) == tuple(meta["band_std"])
    assert config.model.in_channels == 0  # the given config is left alone
    assert datasets.resolve_inputs(resolved) is resolved  # nothing left to resolve
    # The resolved statistics normalise the train tiles to mean 0, std 1 per band.
    train = np.stack([tiles[f"t{k}"] for k in range(4)])
    normed = transforms.normalize({"image": train}, resolved.input.mean, resolved.input.std)
    np.testing.assert_allclose(normed["image"].mean((0, 1, 2)), 0, atol=1e-3)
    np.testing.assert_allclose(normed["image"].std((0, 1, 2)), 1, atol=1e-3)
    # 4 values of the user's own: "config" keeps them.
    own = _folder_config(
        tmp_path / "data",
        **{"input.mean": (1.0,) * 4, "input.std": (2.0,) * 4, "input.norm_stats": "config"},
    )
    assert tuple(datasets.resolve_inputs(own).input.mean) == (1.0,) * 4

    cases = [
        (
            {"model.in_channels": 3},
            "config.model.in_channels=3: dataset 'folder' (config 'bands') has 4-band images",
        ),
        (
            {"input.norm_stats": "config"},
            "config.input.mean=(123.675, 116.28, 103.53): dataset 'folder' (config 'bands') "
            "has 4-band images; expected 4 values",
        ),
        (
            {"input.photometric": True},
            "config.input.photometric=True: expected False with dataset 'folder' "
            "(config 'bands')'s 4-band uint16 images",
        ),
    ]
    for changes, message in cases:
        with pytest.raises(config_check.ConfigError) as e:
            datasets.resolve_inputs(_folder_config(tmp_path / "data", **changes))
        assert any(message in p for p in e.value.problems), e.value.problems


def test_rgb_datasets_resolve_without_reading_data(tmp_path):
    config = common.base_config()
    config.dataset.data_dir = str(tmp_path / "nothing here")  # segjax_shapes: not prepared
    resolved = datasets.resolve_inputs(config)
    assert resolved.model.in_channels == 3
    assert tuple(resolved.input.mean) == common.IMAGENET_MEAN
    assert not os.path.exists(tmp_path / "nothing here")
    config.input.norm_stats = "dataset"
    with pytest.raises(config_check.ConfigError, match="has no per-band statistics"):
        datasets.resolve_inputs(config)


@pytest.mark.parametrize(
    ("channels", "dtype"),
    [
        # 44 s on the 2-core CPU: the band paths themselves are the fast tests above.
        pytest.param(4, "uint16", marks=pytest.mark.slow),
        pytest.param(12, "float32", marks=pytest.mark.slow),
    ],
)
def test_train_eval_and_predict_on_band_tiles(tmp_path, channels, dtype):
    import jax

    from segjax import eval_lib, export, sharding, train_lib
    from segjax.weights import read_pretrained

    manual, tiles, _ = _band_folder(tmp_path / "m", np.random.default_rng(5), channels, dtype)
    folder.prepare(tmp_path / "data", "bands", manual)
    c = _folder_config(tmp_path / "data")
    c.model.name = "unet_tiny"
    c.model.output_stride = None
    c.input.batch_size = c.input.eval_batch_size = 2
    c.input.crop_size = c.input.eval_pad_size = (32, 32)
    c.input.scale_range = (1.0, 1.0)
    c.optimizer.warmup_steps = 0
    c.train.steps = c.train.eval_every = c.train.checkpoint_every = 2
    c.train.async_checkpointing = False
    c.eval.num_visualizations = 1
    mesh = sharding.make_mesh(jax.devices()[:2])
    workdir = str(tmp_path / "run")
    final = train_lib.train_and_evaluate(c, workdir, mesh=mesh)
    assert final["step"] == 2 and 0.0 <= final["miou"] <= 1.0
    saved = eval_lib.load_config(os.path.join(workdir, "config.json"))
    assert saved.model.in_channels == channels and len(saved.input.mean) == channels
    # The saved (resolved) config reproduces the run's score and resumes the workdir.
    ckpt_dir = os.path.join(workdir, "checkpoints")
    _, scores = eval_lib.evaluate_checkpoint(saved, ckpt_dir, mesh=mesh)
    np.testing.assert_allclose(scores["miou"], final["miou"], rtol=1e-6)
    train_lib.check_workdir_config(workdir, datasets.resolve_inputs(c))
    report = eval_lib.run_evaluation(saved, ckpt_dir, str(tmp_path / "out"), mesh=mesh)
    (panel,) = report["files"]["visualizations"]  # image (bands 1-3) | truth | prediction
    assert np.asarray(Image.open(panel)).shape[-1] == 3
    # Own files: a tile of the right bands is predicted; one of other bands is named.
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "tile.tif").write_bytes(_tiff(tiles["t5"]))
    (tmp_path / "in" / "rgb.tif").write_bytes(_tiff(_tile(np.random.default_rng(0), 3, dtype)))
    with pytest.raises(eval_lib.UnreadableFilesError) as e:
        eval_lib.predict_files(
            saved, ckpt_dir, [str(tmp_path / "in" / "*.tif")], str(tmp_path / "pred"),
            mesh=mesh, progress=False,
        )  # fmt: skip
    assert e.value.skipped == [
        (str(tmp_path / "in" / "rgb.tif"), f"ValueError: 3 bands; the model takes {channels}")
    ]
    pred = np.asarray(Image.open(tmp_path / "pred" / "tile.png"))
    assert pred.shape == (H, W) and set(np.unique(pred)) <= {0, 1}
    # An export takes the C bands in the dataset's units (normalised inside).
    described = export.export_workdir(workdir, "stablehlo", str(tmp_path / "export"))
    assert described["input"]["shape"] == [1, 32, 32, channels]
    with open(tmp_path / "export" / "model.jax_export", "rb") as f:
        exported = jax.export.deserialize(f.read())
    variables = read_pretrained(str(tmp_path / "export" / "variables.msgpack"))[0]
    # eval.py --images pads the normalised image with 0: the band means in stored units.
    canvas = np.tile(np.asarray(saved.input.mean, np.float32), (1, 32, 32, 1))
    canvas[0, :H, :W] = tiles["t5"]
    probs = np.asarray(exported.call(variables, canvas))
    assert probs.shape == (1, 32, 32, 2)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    region = probs[0, :H, :W]
    tied = np.abs(region[..., 1] - region[..., 0]) < 1e-4
    assert np.all((region.argmax(-1) == pred) | tied)  # what eval.py --images wrote
