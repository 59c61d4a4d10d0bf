"""Per-layer convolution timings: forward, input gradient, kernel gradient, by method.

The convolutions of DeepLabv3-ResNet-50 (output stride 8) at batch 4, 256x256 input, each
timed (median of `--repeats`) as one jitted program per part: the forward, the gradient
for the input alone, the gradient for the kernel alone. Methods: `xla` (one XLA
convolution, plain autodiff: what `nn.Conv` does) and `auto` (`segjax.models.layers.conv2d`
as the models use it). Run it under different `XLA_FLAGS` to compare XLA:CPU settings:

    python benchmarks/conv_cpu.py
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution \\
        python benchmarks/conv_cpu.py --methods xla
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segjax.models import layers

# name: (batch, size, cin, cout, kernel, stride, dilation)
CASES = {
    "stem 7x7 s2 3->64 @256": (4, 256, 3, 64, 7, 2, 1),
    "3x3 64 @64": (4, 64, 64, 64, 3, 1, 1),
    "3x3 128 s2 @64": (4, 64, 128, 128, 3, 2, 1),
    "3x3 256 d2 @32": (4, 32, 256, 256, 3, 1, 2),
    "3x3 512 d4 @32": (4, 32, 512, 512, 3, 1, 4),
    "1x1 1024->2048 @32": (4, 32, 1024, 2048, 1, 1, 1),
    "1x1 2048->512 @32": (4, 32, 2048, 512, 1, 1, 1),
    "1x1 256->512 s2 @64": (4, 64, 256, 512, 1, 2, 1),
    "ASPP 3x3 2048->256 d12 @32": (4, 32, 2048, 256, 3, 1, 12),
    "ASPP 3x3 2048->256 d24 @32": (4, 32, 2048, 256, 3, 1, 24),
}


def _median_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 1)


def main(argv: list[str] | None = None) -> dict:
    """Times every case and method; prints one JSON line per case and returns them all."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["xla", "auto"])
    p.add_argument("--cases", nargs="+", default=list(CASES), help="names from CASES")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    results = {}
    for name in a.cases:
        b, size, cin, cout, k, stride, dilation = CASES[name]
        keys = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(keys[0], (b, size, size, cin))
        kernel = jax.random.normal(keys[1], (k, k, cin, cout)) * (2 / (k * k * cin)) ** 0.5
        out = -(-size // stride)
        g = jax.random.normal(keys[2], (b, out, out, cout))
        row = {"gflop": round(2 * b * out * out * k * k * cin * cout / 1e9, 2)}
        for method in a.methods:

            def conv(x, kernel, method=method, stride=stride, dilation=dilation):
                return layers.conv2d(x, kernel, strides=stride, dilation=dilation, method=method)

            forward = jax.jit(conv)
            input_grad = jax.jit(
                lambda x, kernel, g, c=conv: jax.vjp(lambda x: c(x, kernel), x)[1](g)
            )
            kernel_grad = jax.jit(
                lambda x, kernel, g, c=conv: jax.vjp(lambda w: c(x, w), kernel)[1](g)
            )
            row[method] = {
                "forward_ms": _median_ms(forward, x, kernel, repeats=a.repeats),
                "input_grad_ms": _median_ms(input_grad, x, kernel, g, repeats=a.repeats),
                "kernel_grad_ms": _median_ms(kernel_grad, x, kernel, g, repeats=a.repeats),
            }
        results[name] = row
        print(json.dumps({"case": name, **row, "xla_flags": os.environ.get("XLA_FLAGS", "")}))
    return results


if __name__ == "__main__":
    main()
