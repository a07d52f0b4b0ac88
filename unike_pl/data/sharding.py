"""Sharing an eval split between processes without padding it: whole batches dealt out in turn.

Lightning's default `DistributedSampler` deals records one by one and repeats some so every process gets
as many; under editing that is wrong twice over: a repeated record is scored twice, and a sequence (a
batch of T edits applied in order) would be made of other records than on one process. Here the batches
are those of one process (consecutive records), batch i goes to process i mod world size, and nothing is
repeated, so every record is edited and scored once, in the same sequence, wherever it runs.
`gather_rows` brings per-row results of every process back together, for metrics over the whole split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized

import lightning as L
import torch
from torch.utils.data import DistributedSampler

from unike_pl.errors import UserError


class WholeBatchShards(DistributedSampler):
    """The records of this process's batches, in order; a DataLoader with the same `batch_size` cuts them
    back into exactly those batches (only the split's last batch can be short, and it comes last)."""

    def __init__(self, dataset: Sized, batch_size: int, num_replicas: int, rank: int) -> None:
        """
        Args:
            dataset: the eval split.
            batch_size: records per batch (the sequence length of sequential editing).
            num_replicas: processes sharing the split.
            rank: this process.
        """
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        count = len(dataset)
        batches = range(0, count, batch_size)
        if len(batches) < num_replicas:
            raise UserError(
                f"{count} records in batches of {batch_size} make {len(batches)} batch(es), fewer than the "
                f"{num_replicas} processes: run on fewer devices or with smaller batches"
            )
        self.indices = [
            i for start in batches[rank::num_replicas] for i in range(start, min(start + batch_size, count))
        ]
        self.num_samples = len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def eval_sampler(dataset: Sized, batch_size: int, trainer: L.Trainer | None) -> WholeBatchShards | None:
    """The sampler of an evaluation loader: this process's whole batches when the run has several
    processes, None (the DataLoader's own order) on one."""
    if trainer is None or trainer.world_size == 1:
        return None
    return WholeBatchShards(dataset, batch_size, trainer.world_size, trainer.global_rank)


def gather_rows(
    rows: torch.Tensor, all_gather: Callable[[torch.Tensor], torch.Tensor], world_size: int
) -> torch.Tensor:
    """`rows` (count, ...) of every process, concatenated in rank order; the counts may differ between
    processes (whole batches are dealt out). `all_gather` is the LightningModule's (it stacks a tensor of
    the same shape from every process); on one process `rows` comes back as it is."""
    if world_size == 1:
        return rows
    counts = all_gather(torch.tensor(len(rows), device=rows.device)).reshape(-1)  # (world,)
    as_bytes = rows.dtype == torch.bool  # gloo gathers no bool tensors
    padded = rows.new_zeros(
        (int(counts.max()), *rows.shape[1:]), dtype=torch.uint8 if as_bytes else rows.dtype
    )
    padded[: len(rows)] = rows
    gathered = all_gather(padded)  # (world, most, ...)
    joined = torch.cat([gathered[rank, : int(count)] for rank, count in enumerate(counts)])
    return joined.bool() if as_bytes else joined
