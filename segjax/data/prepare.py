"""Prepares a dataset once, from files you already have, into the `array_record` format.

    python -m segjax.data.prepare --dataset NAME --manual_dir PATH [--config C] [--data_dir D]

`NAME` is a key of `segjax.data.datasets.DATASETS` (voc, cityscapes, ade20k, camvid,
pascal_context, nyudv2, sunrgbd, folder, segjax_shapes, ...); `PATH` holds the dataset's
archives and/or their extracted folders (see the README's "Datasets" section); `D` defaults to
$SEGJAX_DATA_DIR or ~/.cache/segjax/datasets, which is also what training reads. Nothing
is downloaded. Preparing an already prepared dataset does nothing. It prints the split
sizes and the config flags that train on it.
"""

from __future__ import annotations

import argparse
import os
import sys

from segjax.data import bands, datasets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segjax.data.prepare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--dataset", required=True, choices=sorted(datasets.DATASETS))
    parser.add_argument(
        "--manual_dir", default="", help="folder (or archive) with the dataset's files"
    )
    parser.add_argument("--config", default="default", help="builder config name")
    parser.add_argument("--data_dir", default=datasets.default_data_dir())
    parser.add_argument(
        "--val_fraction",
        type=float,
        default=0.1,
        help="folder only: share of images held out for validation without split files",
    )
    args = parser.parse_args(argv)
    spec = datasets.get_spec(args.dataset)
    data_dir = os.path.expanduser(args.data_dir)
    if spec.configs and args.config not in spec.configs:
        parser.error(f"dataset {args.dataset!r} has configs {list(spec.configs)}")
    if not spec.builtin and not args.manual_dir and not spec.is_prepared(data_dir, args.config):
        print(datasets.not_prepared_message(args.dataset, args.config, data_dir), file=sys.stderr)
        return 2
    manual_dir = os.path.expanduser(args.manual_dir) if args.manual_dir else None
    if args.dataset == "folder":
        from segjax.data.builders import folder

        builder = folder.prepare(data_dir, args.config, manual_dir, val_fraction=args.val_fraction)
    else:
        builder = spec.prepare(data_dir, args.config, manual_dir)
    meta = builder.info.metadata
    print(f"{args.dataset}/{args.config}: prepared in {builder.data_dir}")
    for split, info in builder.info.splits.items():
        print(f"  {split}: {info.num_examples} examples")
    print(f"  {meta['num_classes']} classes: {', '.join(meta['class_names'])}")
    info = bands.image_info(meta)
    if not info.is_rgb8:
        print(
            f"  {info.channels}-band {info.dtype} images; per-band mean/std stored "
            "(train with --config.input.photometric=False: it is for 8-bit RGB)"
        )
    flags = [
        f"--config.dataset.name={args.dataset}",
        f"--config.dataset.num_classes={meta['num_classes']}",
    ]
    if args.config != "default":
        flags.append(f"--config.dataset.config={args.config}")
    if data_dir != os.path.expanduser(datasets.default_data_dir()):
        flags.append(f"--config.dataset.data_dir={data_dir}")
    print("Train on it with: python train.py --config configs/<x>.py " + " ".join(flags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
