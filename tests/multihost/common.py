"""Shared by the multi-process worker and the test that checks it."""

import numpy as np


def global_batch(config, seed: int = 0) -> dict[str, np.ndarray]:
    """A fixed batch of the config's global batch size, with some ignored pixels."""
    rng = np.random.default_rng(seed)
    b, (h, w) = config.input.batch_size, config.input.crop_size
    label = rng.integers(0, config.dataset.num_classes, (b, h, w)).astype(np.int32)
    label[:, :3] = config.dataset.ignore_index
    return {"image": rng.normal(size=(b, h, w, 3)).astype(np.float32), "label": label}
