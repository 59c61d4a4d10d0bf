"""Console logging for the entry points: segjax's own lines, libraries' warnings only.

Orbax, grain and tfds log every save, rename and dataset-info read at INFO level, which
buries the training log; their INFO records are dropped, their warnings and errors kept.
"""

from __future__ import annotations

import logging as py_logging

from absl import logging

QUIET_PACKAGES = ("orbax", "grain", "tensorflow_datasets", "etils", "jax")


class _LibraryInfoFilter(py_logging.Filter):
    def filter(self, record: py_logging.LogRecord) -> bool:
        if record.levelno >= py_logging.WARNING:
            return True
        path = record.pathname.replace("\\", "/")
        return not any(f"/{package}/" in path for package in QUIET_PACKAGES)


def setup_logging() -> None:
    """INFO for segjax, WARNING and above for the libraries in `QUIET_PACKAGES`."""
    logging.set_verbosity(logging.INFO)
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
        handler.addFilter(_LibraryInfoFilter())
