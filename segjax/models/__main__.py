"""Lists the registered models with their parameter counts: ``python -m segjax.models``.

Parameters are counted on ``jax.eval_shape`` of ``init``, so nothing is computed. With
``--flops`` the forward pass at ``--size`` is lowered (not run) and XLA's cost analysis gives
its GFLOPs per image.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from segjax.models.registry import MODELS, RGBD_MODELS, build_model


def param_count(variables) -> int:
    """Number of scalars in ``variables["params"]`` (running statistics are not parameters)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"]))


def abstract_variables(model, image_shape: Sequence[int]):
    """``ShapeDtypeStruct`` pytree of ``model.init`` on an image of ``image_shape``."""
    image = jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), image)


def forward_gflops(model, variables, image_shape: Sequence[int]) -> float | None:
    """GFLOPs of one eval forward from XLA's cost analysis of the lowered (unrun) program."""
    image = jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32)
    lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, image)
    cost = lowered.cost_analysis()
    if isinstance(cost, list):  # Older jax returns one dict per device.
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return cost["flops"] / 1e9 / image_shape[0]


def main(argv: Sequence[str] | None = None) -> None:
    """Prints one line per registered model: name, parameters, optional GFLOPs."""
    parser = argparse.ArgumentParser(prog="python -m segjax.models", description=__doc__)
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--flops", action="store_true", help="also print forward GFLOPs/image")
    parser.add_argument("--aux-head", action="store_true", help="count the auxiliary head too")
    parser.add_argument("names", nargs="*", help="models to list (default: all)")
    args = parser.parse_args(argv)
    for name in args.names or [*sorted(MODELS), *sorted(RGBD_MODELS)]:
        kwargs = {"aux_head": True} if args.aux_head and name != "pixel_mlp" else {}
        model = build_model(name, num_classes=args.num_classes, **kwargs)
        shape = (1, *args.size, 4 if name in RGBD_MODELS else 3)  # RGB-D: RGB + depth
        variables = abstract_variables(model, shape)
        line = f"{name:28s} {param_count(variables):>12,d} params"
        if args.flops:
            gflops = forward_gflops(model, variables, shape)
            line += f"  {gflops:9.2f} GFLOPs at {args.size[0]}x{args.size[1]}" if gflops else ""
        print(line)


if __name__ == "__main__":
    main()
