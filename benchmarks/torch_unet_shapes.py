"""An independent plain PyTorch U-Net (16-128 channels) trained on the built-in dataset.

The reference of issue 20's claim ("a plain U-Net, AdamW 2e-3, batch 32, flips, reaches
about 37% mIoU after 4 minutes and 67% after 9"): written outside segjax's code, it
reads the prepared `segjax_shapes/small` split (exported once to a .npz by this script
under segjax's interpreter) and trains in the torch virtualenv (`--torch_python`,
default `$SEGJAX_TORCH_PYTHON`). Recipe: the milesial-style U-Net (two conv-BN-ReLU per
level, max-pool, 2x2 transposed convs, 482,822 parameters = segjax `unet` at
`base_width=16, depth=3`), PyTorch's default initialisation, AdamW 2e-3 (PyTorch's
default weight decay 0.01) at a constant learning rate, batches of 32 drawn with
replacement, horizontal flips, the training split's per-channel mean/std, cross-entropy;
validation mIoU over the 512 validation images every `--eval_every` steps, with the
elapsed seconds (evaluation included).

    python benchmarks/torch_unet_shapes.py --steps 2000 --eval_every 250
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def export(data_dir: str, path: str) -> None:
    """The prepared `small` split as uint8 arrays (segjax's interpreter)."""
    import tensorflow_datasets as tfds

    from segjax.data.builders import segjax_shapes

    segjax_shapes.prepare(data_dir, "small")
    builder = tfds.builder_from_directory(str(segjax_shapes.dataset_dir(data_dir, "small")))
    out = {}
    for split in ("train", "validation"):
        source = builder.as_data_source(split)
        records = [source[i] for i in range(len(source))]
        out[f"{split}_image"] = np.stack([r["image"] for r in records])
        out[f"{split}_label"] = np.stack([r["label"][..., 0] for r in records])
    np.savez(path, **out)


def train(path: str, steps: int, eval_every: int) -> None:
    """The PyTorch run (the torch interpreter)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    d = np.load(path)
    xtr = torch.tensor(d["train_image"]).permute(0, 3, 1, 2).float()
    ytr = torch.tensor(d["train_label"]).long()
    xva = torch.tensor(d["validation_image"]).permute(0, 3, 1, 2).float()
    yva = torch.tensor(d["validation_label"]).long()
    mean, std = xtr.mean((0, 2, 3), keepdim=True), xtr.std((0, 2, 3), keepdim=True)
    xtr, xva = (xtr - mean) / std, (xva - mean) / std

    def double_conv(cin, cout):
        return nn.Sequential(
            *(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()),
            *(nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()),
        )

    class UNet(nn.Module):
        def __init__(self, w=16, depth=3, classes=6):
            super().__init__()
            self.inc = double_conv(3, w)
            self.downs = nn.ModuleList(double_conv(w << i, w << (i + 1)) for i in range(depth))
            levels = list(reversed(range(depth)))
            self.ups = nn.ModuleList(nn.ConvTranspose2d(w << (i + 1), w << i, 2, 2) for i in levels)
            self.convs = nn.ModuleList(double_conv(w << (i + 1), w << i) for i in levels)
            self.out = nn.Conv2d(w, classes, 1)

        def forward(self, x):
            x, skips = self.inc(x), []
            for down in self.downs:
                skips.append(x)
                x = down(F.max_pool2d(x, 2))
            for up, conv in zip(self.ups, self.convs, strict=True):
                x = conv(torch.cat([skips.pop(), up(x)], 1))
            return self.out(x)

    model = UNet()
    print(f"parameters {sum(p.numel() for p in model.parameters()):,}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def val_miou():
        model.eval()
        cm = torch.zeros(36, dtype=torch.long)
        with torch.no_grad():
            for i in range(0, len(xva), 64):
                pred = model(xva[i : i + 64]).argmax(1)
                cm += torch.bincount(yva[i : i + 64].flatten() * 6 + pred.flatten(), minlength=36)
        model.train()
        cm = cm.reshape(6, 6).double()
        inter = cm.diag()
        return 100 * (inter / (cm.sum(0) + cm.sum(1) - inter).clamp(min=1)).mean().item()

    g = torch.Generator().manual_seed(0)
    t0 = time.time()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(xtr), (32,), generator=g)
        x, y = xtr[idx], ytr[idx]
        flip = torch.rand(32, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        y = torch.where(flip[:, None, None], y.flip(2), y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            print(
                f"step {step}  {time.time() - t0:.0f} s  loss {loss.item():.3f}  "
                f"val mIoU {val_miou():.2f}",
                flush=True,
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--eval_every", type=int, default=250)
    p.add_argument(
        "--data_dir",
        default=os.environ.get("SEGJAX_DATA_DIR", os.path.expanduser("~/.cache/segjax/datasets")),
    )
    p.add_argument("--torch_python", default=os.environ.get("SEGJAX_TORCH_PYTHON", ""))
    p.add_argument("--_train", default="", help=argparse.SUPPRESS)  # the torch side: the .npz
    a = p.parse_args()
    if a.steps < 1 or a.eval_every < 1:
        p.error(f"--steps and --eval_every must be >= 1, got {a.steps} and {a.eval_every}")
    if a._train:
        return train(a._train, a.steps, a.eval_every)
    if not a.torch_python:
        p.error("--torch_python: no interpreter with torch given (or set $SEGJAX_TORCH_PYTHON)")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "shapes_small.npz")
        export(a.data_dir, path)
        cmd = [
            a.torch_python,
            os.path.abspath(__file__),
            "--_train",
            path,
            "--steps",
            str(a.steps),
            "--eval_every",
            str(a.eval_every),
        ]
        sys.exit(subprocess.call(cmd))


if __name__ == "__main__":
    main()
