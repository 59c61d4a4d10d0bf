"""Scalar metrics of a run: TensorBoard event files plus a `metrics.jsonl` log.

Why not clu's metric writers (DESIGN.md's first choice): `clu.metric_writers` imports
TensorFlow when the package is imported (clu 0.0.12), and training must run where
TensorFlow is not installed (accelerator hosts). TensorBoard's own event-file writer
needs no TensorFlow, so segjax writes events with it directly.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricWriter:
    """Writes scalars by step to `<logdir>` (TensorBoard) and `<logdir>/metrics.jsonl`.

    Only one process of a multi-host job should write: pass `enabled=False` elsewhere.
    """

    def __init__(self, logdir: str, *, enabled: bool = True):
        self.logdir = logdir
        self.enabled = enabled
        self._events = None
        self._jsonl = None
        if enabled:
            os.makedirs(logdir, exist_ok=True)
            self._events = EventFileWriter(logdir)
            self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a")  # noqa: SIM115

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = [
            summary_pb2.Summary.Value(tag=name, simple_value=float(value))
            for name, value in scalars.items()
        ]
        self._events.add_event(
            event_pb2.Event(
                wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
            )
        )
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        if self.enabled:
            self._events.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._events.close()
            self._jsonl.close()
            self.enabled = False
