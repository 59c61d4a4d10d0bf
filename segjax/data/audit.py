"""Audits a dataset's labels: ``python -m segjax.data.audit``.

    python -m segjax.data.audit --dataset segjax_shapes --config small
    python -m segjax.data.audit --dataset voc --config aug --split validation
    python -m segjax.data.audit --dataset folder --manual_dir ~/my_data   # before preparing

For each split, prints the pixels and images of every class, the share of ignored
pixels, and the problems: images whose labels hold values outside
``[0, num_classes)`` other than ``ignore_index`` (with the values), images and labels of different
sizes, and files that cannot be decoded (named; the audit goes on with the others).
The exit status is 1 when it found a problem, 2 when the dataset cannot be opened (not
prepared, no such split, a folder whose images and masks do not pair up), 0 otherwise.

A prepared dataset (``--dataset NAME [--config C] [--data_dir D]``) is read as training
reads it. ``--dataset folder --manual_dir DIR`` reads a folder in the README's layout
(``classes.txt``, ``images/``, ``masks/``) directly, without preparing it, with the
readers and the split rule of ``python -m segjax.data.prepare``, which stops at the
first bad file where the audit lists them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from segjax.data import datasets, transforms, volumes
from segjax.data.builders import folder, from_files

# (name shown in problems, reader) with reader() -> (image (h, w), label name, label [H, W]);
# a reader raises ValueError (naming the file) for a file it cannot decode.
Example = tuple[str, Callable[[], tuple[tuple[int, int], str, np.ndarray]]]


@dataclasses.dataclass
class SplitAudit:
    """What the audit of one split found.

    Attributes:
      split: its name.
      class_names: K names; index = label value.
      ignore_index: the void label value.
      images: examples read (including those with problems).
      pixels: int64 [K], labelled pixels of each class.
      images_with: int64 [K], images holding at least one pixel of each class.
      ignored: pixels labelled `ignore_index`.
      outside: pixels with a value outside the classes and `ignore_index`.
      total: all label pixels of the decoded labels.
      problems: one line per problem, naming the file.
    """

    split: str
    class_names: tuple[str, ...]
    ignore_index: int
    images: int = 0
    pixels: np.ndarray = None
    images_with: np.ndarray = None
    ignored: int = 0
    outside: int = 0
    total: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        k = len(self.class_names)
        self.pixels = np.zeros(k, np.int64) if self.pixels is None else self.pixels
        self.images_with = np.zeros(k, np.int64) if self.images_with is None else self.images_with

    def add(self, name: str, image_size: tuple[int, int], label_name: str, label: np.ndarray):
        """Counts one decoded example and records its problems."""
        k = len(self.class_names)
        values, counts = np.unique(label, return_counts=True)
        in_class = (values >= 0) & (values < k)
        self.pixels[values[in_class]] += counts[in_class]
        self.images_with[values[in_class]] += 1
        is_ignore = values == self.ignore_index
        self.ignored += int(counts[is_ignore].sum())
        bad = ~in_class & ~is_ignore
        self.outside += int(counts[bad].sum())
        self.total += int(label.size)
        if bad.any():
            shown = ", ".join(
                f"{v} ({c} px)" for v, c in zip(values[bad], counts[bad], strict=True)
            )
            self.problems.append(
                f"{label_name}: values outside [0, {k}) and {self.ignore_index}: {shown}"
            )
        if tuple(label.shape) != tuple(image_size):
            self.problems.append(
                from_files.size_mismatch(label_name, label.shape, name, image_size)
            )

    def table(self) -> str:
        """The per-class table, the ignored share and the problems, as printed."""
        name_width = max([len("ignored"), *(len(n) for n in self.class_names)])
        total = max(self.total, 1)
        lines = [
            f"split {self.split}: {self.images} images, {self.total:,} label pixels",
            f"  {'class':{name_width}s}  {'value':>5s}  {'pixels':>12s}  {'share':>7s}  "
            f"{'images':>7s}",
        ]
        for value, name in enumerate(self.class_names):
            never = "  (never present)" if not self.pixels[value] else ""
            lines.append(
                f"  {name:{name_width}s}  {value:5d}  {self.pixels[value]:12,d}  "
                f"{100 * self.pixels[value] / total:6.2f}%  {self.images_with[value]:7d}{never}"
            )
        lines.append(
            f"  {'ignored':{name_width}s}  {self.ignore_index:5d}  {self.ignored:12,d}  "
            f"{100 * self.ignored / total:6.2f}%"
        )
        if self.outside:
            lines.append(
                f"  {'outside':{name_width}s}  {'':5s}  {self.outside:12,d}  "
                f"{100 * self.outside / total:6.2f}%"
            )
        if self.problems:
            lines.append(f"  {len(self.problems)} problems:")
            lines += [f"    {p}" for p in self.problems]
        else:
            lines.append("  no problems")
        return "\n".join(lines)


def audit_examples(
    examples: Iterable[Example],
    split: str,
    class_names: Sequence[str],
    ignore_index: int = from_files.IGNORE_INDEX,
) -> SplitAudit:
    """Reads every example of a split, counting and checking its label (see `SplitAudit`)."""
    audit = SplitAudit(split, tuple(class_names), ignore_index)
    for name, read in examples:
        audit.images += 1
        try:
            image_size, label_name, label = read()
        except ValueError as e:  # The readers name the file and say what is wrong.
            audit.problems.append(str(e))
            continue
        audit.add(name, image_size, label_name, label)
    return audit


# ------------------------------------------------------------------------------ sources


def prepared_examples(source, split: str) -> Iterable[Example]:
    """The records of a prepared split (`builder.as_data_source(split)`)."""

    def reader(i: int):
        def read():
            try:
                record = source[i]
                # A volume (its record has a voxel spacing): [D, H, W] voxels, not [H, W].
                is_volume = "spacing" in record
                sample = (volumes.decode_volume if is_volume else transforms.decode_record)(record)
            except Exception as e:  # A corrupt record: name it and go on.
                raise ValueError(f"{split} record {i}: cannot decode ({e})") from e
            record_id = record.get("id")
            if isinstance(record_id, bytes):
                record_id = record_id.decode()
            name = f"{split} record {i}" + (f" (id {record_id})" if record_id is not None else "")
            size = sample["image"].shape[: 3 if is_volume else 2]
            return size, name + " label", sample["label"]

        return read

    for i in range(len(source)):
        yield f"{split} record {i} image", reader(i)


def folder_examples(
    builder: from_files.FromFilesBuilder, tree: from_files.FileTree, pairs: list[from_files.Pair]
) -> Iterable[Example]:
    """The (image, mask) files of a split of a user's files, read as `prepare` reads them."""

    def reader(pair: from_files.Pair):
        def read():
            # The builder's reader: multi-band images too, and their bands checked.
            _, image_size = builder.read_image(tree, pair.image)
            return image_size, tree.origin(pair.label), builder.read_label(tree, pair.label)

        return read

    for pair in pairs:
        yield tree.origin(pair.image), reader(pair)


def audit_prepared(
    name: str, config: str, data_dir: str, splits: Sequence[str] = (), ignore_index: int = 255
) -> list[SplitAudit]:
    """Audits the prepared dataset `name/config` in `data_dir` (all splits by default)."""
    spec = datasets.get_spec(name)
    if spec.configs and config not in spec.configs:
        raise KeyError(f"Dataset {name!r} has no config {config!r}; known: {list(spec.configs)}")
    if not spec.builtin and not spec.is_prepared(data_dir, config):
        raise FileNotFoundError(datasets.not_prepared_message(name, config, data_dir))
    builder = spec.prepare(data_dir, config, None)
    class_names = tuple(builder.info.metadata["class_names"])
    available = list(builder.info.splits)
    out = []
    for split in splits or available:
        if split not in available:
            raise KeyError(f"Split {split!r} not in dataset {name!r}; has {available}")
        source = builder.as_data_source(split)
        out.append(
            audit_examples(prepared_examples(source, split), split, class_names, ignore_index)
        )
    return out


def audit_folder(
    manual_dir: str, splits: Sequence[str] = (), *, val_fraction: float = 0.1
) -> list[SplitAudit]:
    """Audits a user's folder (README layout) without preparing it."""
    class_names = folder.read_class_names(manual_dir)
    first, (channels, dtype) = folder.first_image(manual_dir)
    with tempfile.TemporaryDirectory() as scratch:
        builder = folder.SegjaxFolder(
            config=folder.FolderConfig(
                name="audit",
                class_names=class_names,
                val_fraction=val_fraction,
                image_channels=channels,
                image_dtype=dtype,
                bands_of=first,
            ),
            data_dir=scratch,
        )
        tree = from_files.manual_tree(manual_dir, builder.ARCHIVES, extract_dir=scratch)
        try:
            pairs = builder.split_pairs(tree)
            out = []
            for split in splits or list(pairs):
                if split not in pairs:
                    raise KeyError(f"Split {split!r} not in {manual_dir}; has {list(pairs)}")
                examples = folder_examples(builder, tree, pairs[split])
                out.append(audit_examples(examples, split, class_names, from_files.IGNORE_INDEX))
        finally:
            tree.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segjax.data.audit",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--dataset", required=True, choices=sorted(datasets.DATASETS))
    parser.add_argument("--config", default="default", help="builder config name")
    parser.add_argument("--split", action="append", default=[], help="split(s); default: all")
    parser.add_argument("--data_dir", default=datasets.default_data_dir())
    parser.add_argument(
        "--manual_dir", default="", help="folder only: audit this folder without preparing it"
    )
    parser.add_argument(
        "--val_fraction", type=float, default=0.1, help="with --manual_dir: as prepare's"
    )
    parser.add_argument(
        "--ignore_index",
        type=int,
        default=from_files.IGNORE_INDEX,
        help="the void label value of a prepared dataset (a folder's is 255)",
    )
    args = parser.parse_args(argv)
    try:
        if args.manual_dir:
            if args.dataset != "folder":
                parser.error(
                    "--manual_dir is for --dataset folder; prepare other datasets first "
                    "(preparing checks every file), then audit them"
                )
            where = f"folder {os.path.expanduser(args.manual_dir)} (not prepared)"
            audits = audit_folder(
                os.path.expanduser(args.manual_dir), args.split, val_fraction=args.val_fraction
            )
        else:
            data_dir = os.path.expanduser(args.data_dir)
            where = f"{args.dataset}/{args.config} prepared in {data_dir}"
            audits = audit_prepared(
                args.dataset, args.config, data_dir, args.split, args.ignore_index
            )
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"audit: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    names = audits[0].class_names if audits else ()
    print(f"{where}: {len(names)} classes")
    for audit in audits:
        print(audit.table())
    found = sum(len(a.problems) for a in audits)
    if found:
        print(f"{found} problems found.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
