"""Images/s of the training input pipeline on Cityscapes-sized data, by worker count.

`configs/cityscapes.py`'s pipeline (decode a 2048x1024 PNG and its label PNG, random
rescale around (2048, 1024) x [0.5, 2.0], pad, random crop with cat_max_ratio 0.75, flip,
photometric distortion, normalise, batch) timed alone, without a model, for each crop
size and grain worker count given. Without `--manual_dir`, it first writes `--images`
synthetic 2048x1024 images and label maps in Cityscapes' own layout (smooth colour fields
with noise, so the PNGs are about as large as real ones) and prepares them with the
`cityscapes` builder, as a user's real archives would be.

    python benchmarks/pipeline_cpu.py     # synthetic data, crops 512x512 and 512x1024
    python benchmarks/pipeline_cpu.py --manual_dir ~/data/cityscapes --workers 8

Compare the figures with the train step's images/s (`python -m segjax.bench`) on the
accelerator that will run the training: the pipeline keeps up when it delivers more.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import cv2
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def write_synthetic_cityscapes(root: str, images: int, seed: int = 0) -> None:
    """`images` 2048x1024 train images (and 2 val) with labelId maps, in Cityscapes' layout."""
    rng = np.random.default_rng(seed)
    h, w = 1024, 2048
    for split, count in (("train", images), ("val", 2)):
        for k in range(count):
            city = ("aachen", "bremen", "lindau")[k % 3]
            name = f"{city}_{k:06d}_000019"
            field = rng.integers(0, 256, (h // 64, w // 64, 3), dtype=np.uint8)
            image = cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
            image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
            blocks = rng.integers(0, 34, (h // 128, w // 128), dtype=np.uint8)
            label = cv2.resize(blocks, (w, h), interpolation=cv2.INTER_NEAREST)
            for rel, array in (
                (f"leftImg8bit/{split}/{city}/{name}_leftImg8bit.png", image),
                (f"gtFine/{split}/{city}/{name}_gtFine_labelIds.png", label),
            ):
                path = os.path.join(root, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                cv2.imwrite(path, array)


def main(argv: list[str] | None = None) -> list[dict]:
    """Prepares the data (if needed), times each (crop, workers) pair, prints JSON lines."""
    from configs import cityscapes as cityscapes_config
    from segjax import bench
    from segjax.data.builders import cityscapes

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--manual_dir", default=None, help="real Cityscapes archives or folders")
    p.add_argument("--data_dir", default=None, help="where to prepare (default: a temp dir)")
    p.add_argument("--images", type=int, default=24, help="synthetic train images")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crops", nargs="+", default=["512x512", "512x1024"], help="HxW")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2, 8])
    p.add_argument("--batches", type=int, default=8, help="timed batches per setting")
    a = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        manual_dir = a.manual_dir
        if manual_dir is None:
            manual_dir = os.path.join(tmp, "manual")
            write_synthetic_cityscapes(manual_dir, a.images)
        data_dir = a.data_dir or os.path.join(tmp, "data")
        cityscapes.prepare(data_dir, "default", manual_dir)
        results = []
        for crop in a.crops:
            ch, cw = (int(v) for v in crop.split("x"))
            for workers in a.workers:
                config = cityscapes_config.get_config()
                with config.unlocked():
                    config.dataset.data_dir = data_dir
                    config.input.batch_size = a.batch
                    config.input.crop_size = (ch, cw)
                    config.input.worker_count = workers
                result = bench.pipeline_benchmark(config, batches=a.batches)
                result["synthetic"] = a.manual_dir is None
                print(json.dumps(result), flush=True)
                results.append(result)
    return results


if __name__ == "__main__":
    main()
