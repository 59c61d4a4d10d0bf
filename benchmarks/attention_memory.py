"""Train-step memory of the attention models at the Cityscapes crop, from the compiled program.

For each model and compute dtype, the train step that ``train.py`` runs (``train_lib.setup``:
the same jit, shardings and donation; SGD with momentum 0.9 as mmsegmentation's schedules,
19 classes, mmseg's auxiliary FCN head on) is lowered for a batch of 2 images of 512x1024
and compiled, never executed; the figure is the compiled program's memory analysis
(``segjax.evaluation.memory_analysis``: arguments + outputs + temporaries - donated bytes,
i.e. parameters, optimizer state, batch and every activation the backward pass keeps). It
is printed next to mmsegmentation's published training memory for the same crop at 2
images per GPU (its model-zoo READMEs, column "Mem (GB)", PyTorch on V100 GPUs; GB there
is what ``torch.cuda.max_memory_allocated`` reports / 1024^3).

    python benchmarks/attention_memory.py                          # every model, fp32 + bf16
    python benchmarks/attention_memory.py --models ccnet_resnet50 --dtypes bfloat16

Compiling a ResNet-50-d8 train step at 512x1024 takes minutes on a CPU. The figure is the
buffer assignment of the backend that compiles (XLA:CPU here, XLA:GPU on a GPU); convolutions
are compiled as single XLA convolutions (``SEGJAX_CONV=xla``, what ``auto`` does off the
CPU) unless ``--conv auto`` keeps the CPU's tap-by-tap paths. One JSON line per case, then
a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# mmsegmentation model zoo, Cityscapes, crop 512x1024, 2 images/GPU ("Mem (GB)"):
# configs/danet/README.md (DANet R-50-D8 7.4, R-101-D8 10.9), configs/ccnet/README.md
# (CCNet R-50-D8 6, R-101-D8 9.5), configs/emanet/README.md (EMANet R-50-D8 5.4, R-101-D8
# 6.2), configs/encnet/README.md (EncNet R-50-D8 8.6, R-101-D8 12.1), fp32 training.
MMSEG_TRAIN_MEMORY_GB = {
    "danet_resnet50": 7.4,
    "danet_resnet101": 10.9,
    "ccnet_resnet50": 6.0,
    "ccnet_resnet101": 9.5,
    "emanet_resnet50": 5.4,
    "emanet_resnet101": 6.2,
    "encnet_resnet50": 8.6,
    "encnet_resnet101": 12.1,
}
DEFAULT_MODELS = ("danet_resnet50", "ccnet_resnet50")


def measure(model: str, dtype: str, *, batch: int, size: tuple[int, int]) -> dict:
    """Compiles ``model``'s train step for ``batch`` images of ``size``; memory figures."""
    import jax

    from segjax import bench, evaluation, sharding, train_lib

    config = bench.bench_config(model, batch=batch, size=size, dtype=dtype, num_classes=19)
    config.model.aux_head = True  # mmseg's configs train with the auxiliary FCN head
    mesh = sharding.make_mesh(jax.devices()[:1])
    run = train_lib.setup(config, mesh)
    spec = run.task.batch_spec(batch)
    data = sharding.data_sharding(mesh)
    batch_spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=data) for k, v in spec.items()}
    rng = jax.eval_shape(lambda: jax.random.key(0))
    start = time.perf_counter()
    compiled = run.train_step.lower(run.abstract_state, batch_spec, rng).compile()
    memory = evaluation.memory_analysis(compiled)
    return {
        "model": model,
        "dtype": dtype,
        "batch": batch,
        "size": list(size),
        "backend": jax.default_backend(),
        "conv": os.environ.get("SEGJAX_CONV", "auto"),
        "compile_s": round(time.perf_counter() - start, 1),
        "memory": memory,
        "peak_gib": memory and round(memory["peak_estimate_bytes"] / 2**30, 2),
        "mmseg_fp32_gb": MMSEG_TRAIN_MEMORY_GB.get(model),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 1024))
    parser.add_argument("--conv", choices=("xla", "auto"), default="xla")
    args = parser.parse_args(argv)
    os.environ["SEGJAX_CONV"] = args.conv
    sys.path.insert(0, REPO)  # configs/ and segjax/ of this checkout
    results = []
    for model in args.models:
        for dtype in args.dtypes:
            result = measure(model, dtype, batch=args.batch, size=tuple(args.size))
            print(json.dumps(result), flush=True)
            results.append(result)
    print(f"\n{'model':<18} {'dtype':<9} {'segjax GiB':>10} {'mmseg GB (fp32)':>16}")
    for r in results:
        mm = r["mmseg_fp32_gb"]
        print(f"{r['model']:<18} {r['dtype']:<9} {r['peak_gib']:>10} {mm if mm else '-':>16}")
    return results


if __name__ == "__main__":
    main()
