"""Orbax checkpoints of a run: train state, rng and the grain iterator position.

One `CheckpointManager` per workdir (`<workdir>/checkpoints`). It keeps the latest
`keep` steps plus the `keep_best` steps with the highest validation score (the task's
`best_metric`: mIoU for semantic segmentation). Orbax writes
each step into a temporary directory and renames it when complete, so a step killed
half-way is never mistaken for a finished one.
"""

from __future__ import annotations

import os
from typing import Any

import grain.python as grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

BEST_METRIC = "miou"  # the semantic task's; `Checkpointer(best_metric=...)` for others


class CheckpointMismatchError(ValueError):
    """A checkpoint's parameter tree does not match the model it is restored into."""


def _flatten(tree: Any) -> list[tuple[Any, Any]]:
    return jax.tree_util.tree_flatten_with_path(tree)[0]


def _path_str(path: tuple) -> str:
    # Saved trees come back as nested dicts, live ones as dataclasses: compare names only.
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


class IteratorState:
    """A grain iterator state frozen at one step, saveable by grain's checkpoint handler.

    The training loop reads batches ahead of the step it runs (prefetch), so the live
    iterator is ahead of what the model consumed; the checkpoint must hold the state
    right after the last consumed batch, which this captures.
    """

    def __init__(self, state: bytes):
        self._state = state

    def get_state(self) -> bytes:
        return self._state


class Checkpointer:
    """Saves and restores `{"state": pytree, "data": grain iterator}` by step."""

    def __init__(
        self,
        directory: str,
        *,
        keep: int = 2,
        keep_best: int = 1,
        async_save: bool = True,
        best_metric: str = BEST_METRIC,
    ):
        self.best_metric = best_metric
        preserve: list[Any] = [policies.LatestN(n=max(keep, 1))]
        if keep_best > 0:
            preserve.append(
                policies.BestN(
                    get_metric_fn=lambda m: m[best_metric],
                    reverse=False,  # ascending: the last n (highest mIoU) are kept
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            best_fn=lambda m: m[best_metric],
            best_mode="max",
            preservation_policy=policies.AnyPreservationPolicy(preserve),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.PyGrainCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The step with the highest recorded `best_metric` (the latest if none has one)."""
        return self._manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(
        self,
        step: int,
        state: Any,
        *,
        data_state: bytes | None = None,
        metrics: dict[str, float] | None = None,
        force: bool = False,
    ) -> bool:
        """Writes `state` (and the iterator position) at `step`; async unless disabled."""
        items = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            items["data"] = grain.PyGrainCheckpointSave(IteratorState(data_state))
        return self._manager.save(
            step, args=ocp.args.Composite(**items), metrics=metrics, force=force
        )

    def restore(self, step: int, abstract_state: Any, *, data_iterator: Any = None) -> Any:
        """Restores the state at `step` into the shapes/shardings of `abstract_state`.

        When `data_iterator` is given, its position is set to the saved one in place.
        """
        self.check_compatible(step, abstract_state)
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.PyGrainCheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def check_compatible(self, step: int, abstract_state: Any) -> None:
        """Raises `CheckpointMismatchError` naming the paths and shapes that differ.

        Orbax's own error for a mismatched tree is hard to read; this compares the
        saved tree (from its metadata, without reading arrays) with the one expected.
        """
        saved_meta = self._manager.item_metadata(step)["state"]
        saved = {_path_str(p): tuple(v.shape) for p, v in _flatten(saved_meta)}
        expected = {_path_str(p): tuple(v.shape) for p, v in _flatten(abstract_state)}
        missing = sorted(set(expected) - set(saved))
        unexpected = sorted(set(saved) - set(expected))
        reshaped = sorted(k for k in set(saved) & set(expected) if saved[k] != expected[k])
        if not (missing or unexpected or reshaped):
            return
        lines = [f"checkpoint {self.directory}/{step} does not match the model:"]
        lines += [f"  in the model, not the checkpoint: {k} {expected[k]}" for k in missing[:20]]
        lines += [f"  in the checkpoint, not the model: {k} {saved[k]}" for k in unexpected[:20]]
        lines += [
            f"  shape differs: {k}: checkpoint {saved[k]}, model {expected[k]}"
            for k in reshaped[:20]
        ]
        total = len(missing) + len(unexpected) + len(reshaped)
        if total > 60:
            lines.append(f"  ... {total} differences in all")
        raise CheckpointMismatchError("\n".join(lines))

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
