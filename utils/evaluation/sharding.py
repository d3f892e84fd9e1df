"""Evaluation split across the processes of a distributed run.

Every process scores every W-th item (generation, MIA documents, MMLU questions) and the shares are
gathered back into the original order on every process. Nobody waits idle at a barrier while one process
evaluates alone, which on 8 GPUs with 5-shot MMLU on 7B runs past the collective timeout, and the
evaluation takes 1/W of the time. One process (the default) calls the work on the whole list.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from utils.errors import UserError

Warn = Callable[[str], None]


@dataclass(frozen=True)
class Shards:
    rank: int = 0
    world: int = 1

    @classmethod
    def of(cls, accelerator) -> Shards:
        """The shares of an Accelerator's processes."""
        return cls(accelerator.process_index, accelerator.num_processes)

    @classmethod
    def from_environment(cls) -> Shards:
        """The shares of a process started by `accelerate launch`, torchrun or notebook_launcher (their
        WORLD_SIZE); a plain process is alone."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        return cls(state.process_index, state.num_processes)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def map(self, work: Callable[[list, Warn], list], items: Sequence, warn: Warn) -> list:
        """`work(part, warn)` on this process's share of `items` (one result per item, in order); the results
        of all items in their order, on every process. A warning from another process is passed on naming it."""
        if self.world == 1:
            return work(list(items), warn)
        from accelerate.utils import gather_object

        notes: list[str] = []
        try:
            local, error = work(list(items[self.rank::self.world]), notes.append), None
        except Exception as exc:  # noqa: BLE001 (every process must reach the gather, or the others wait forever)
            local, error = [], str(exc) if isinstance(exc, UserError) else f"{exc.__class__.__name__}: {exc}"
        gathered: list[Any] = gather_object([(local, notes, error)])
        failed = [(rank, message) for rank, (_, _, message) in enumerate(gathered) if message is not None]
        if failed:
            rank, message = failed[0]
            raise UserError(f"process {rank} of {self.world} could not evaluate its share: {message}")
        results: list = [None] * len(items)
        for rank, (part, rank_notes, _) in enumerate(gathered):
            results[rank::self.world] = part
            for note in rank_notes:
                warn(f"process {rank} of {self.world}: {note}")
        return results


ALONE = Shards()
