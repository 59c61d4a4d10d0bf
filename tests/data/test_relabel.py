"""Labels made binary at read time."""

import numpy as np

from segjax.data import relabel


class _Source:
    def __repr__(self):
        return "_Source()"

    def __len__(self):
        return 1

    def __getitem__(self, i):
        label = np.array([[0, 1, 2], [3, 255, 5]], np.uint8)[..., None]
        return {"image": np.zeros((2, 3, 3), np.uint8), "label": label, "id": 7}


def test_foreground_classes_become_one_and_void_stays():
    source = relabel.ForegroundLabels(_Source(), (1, 3, 5), 255)
    record = source[0]
    assert record["id"] == 7 and record["label"].dtype == np.uint8
    np.testing.assert_array_equal(record["label"][..., 0], [[0, 1, 0], [1, 255, 1]])
    assert repr(source) == "ForegroundLabels(_Source(), (1, 3, 5), 255)"  # no address
