"""Writing files so that a crash never leaves half of one behind."""

from __future__ import annotations

import os


def atomic_write(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename.

    A reader sees the old file or the new one, never a partial write, and a crash
    mid-write leaves the previous version intact.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
