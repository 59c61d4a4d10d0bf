"""Convert PyTorch weight files for segjax: ``python -m segjax.weights``.

    python -m segjax.weights list
    python -m segjax.weights convert --from torchvision --model resnet50 resnet50.pth out.msgpack
    python -m segjax.weights inspect out.msgpack

``convert`` reads the file without PyTorch, checks every tensor name and shape against the
segjax module, and writes the converted variables (only once everything fits). It prints
how to train from the result: ``--config.model.pretrained=OUT`` with
``--config.model.pretrained_scope=backbone`` for an ImageNet backbone (any segjax model on
that backbone), or ``all`` and the ``--config.model.name`` to use for a whole segmentation
model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence

import jax

from segjax.weights.convert import ConversionError
from segjax.weights.pretrained import convert_file, read_pretrained
from segjax.weights.readers import WeightFileError
from segjax.weights.zoo import CONVERSIONS, SOURCES


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (2 for a file or model that does not fit)."""
    parser = argparse.ArgumentParser(
        prog="python -m segjax.weights", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the architectures that can be converted")
    convert = sub.add_parser("convert", help="convert a .pth / .safetensors file")
    convert.add_argument("--from", dest="source", required=True, choices=SOURCES)
    convert.add_argument("--model", required=True, help="architecture name (see `list`)")
    convert.add_argument("src", help="the PyTorch file (.pth, .pt, .bin or .safetensors)")
    convert.add_argument("out", help="the converted file to write (msgpack)")
    inspect = sub.add_parser("inspect", help="describe a converted file")
    inspect.add_argument("file")
    args = parser.parse_args(argv)

    if args.command == "list":
        for (source, name), conversion in sorted(CONVERSIONS.items()):
            print(f"{source:12s} {name:24s} {conversion.description}")
        return 0
    try:
        if args.command == "convert":
            variables, meta = convert_file(args.source, args.model, args.src, args.out)
        else:
            variables, meta = read_pretrained(args.file)
    except (WeightFileError, ConversionError, KeyError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    params, stats = _count(variables["params"]), _count(variables["batch_stats"])
    where = args.out if args.command == "convert" else args.file
    print(
        f"{where}: {meta['source']} {meta['name']} ({meta['file']}), {params:,} parameters, "
        f"{stats:,} BatchNorm statistics, scope {meta['scope']}"
    )
    if meta["scope"] == "backbone":
        print(
            "train any segjax model on this backbone from it with\n"
            f"  --config.model.pretrained={where} --config.model.pretrained_scope=backbone"
        )
    else:
        kwargs = json.loads(meta["model_kwargs"])
        print(
            f"segjax model {meta['model']} with {kwargs['num_classes']} classes"
            f"{' and an auxiliary head' if kwargs.get('aux_head') else ''}; train or evaluate "
            f"it with\n  --config.model.name={meta['model']} "
            f"--config.model.pretrained={where} --config.model.pretrained_scope=all"
            + ("" if not kwargs.get("aux_head") else " --config.model.aux_head=true")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
