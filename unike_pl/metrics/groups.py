"""Metrics for all records and for each labelled group of records (the world's seen-rule / unseen-rule
edits): one collection over every record and a copy of it per group, filled through one update path."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection, SumMetric

from unike_pl.metrics.names import RECORDS


def add_scores(metrics: MetricCollection, scores: Mapping[str, Tensor]) -> None:
    """Add per-sample scores to the metrics of the same keys."""
    for key, values in scores.items():
        metrics[key].update(values.to(metrics[key].total.device))


class GroupedMetrics(nn.Module):
    """`all`: a metric collection over every record, logged as `{prefix}{metric}`, with the count of records
    scored, `{prefix}records`; per group a fresh copy, logged as `{prefix}{group}/{metric}`, and the group's
    record count, `{prefix}{group}/records`.

    Under DDP every process must hold the same metric objects (their states are summed across processes),
    so the groups are those of the whole split, set before the run (`set_groups`), never those of the
    batches one process happens to see.
    """

    def __init__(self, metrics: MetricCollection, prefix: str) -> None:
        """
        Args:
            metrics: the metrics of every record (not yet updated); the per-group copies are cloned from it.
            prefix: the stage's prefix of every logged name (`val/`).
        """
        super().__init__()
        self.prefix = prefix
        self.all = metrics.clone(prefix=prefix)
        self.records_scored = SumMetric()
        self.groups: tuple[str, ...] = ()
        self.by_group = nn.ModuleList()
        self.records = nn.ModuleList()

    def set_groups(self, groups: Sequence[str]) -> bool:
        """Hold one copy of the metrics per group (fresh ones); returns whether the groups changed."""
        groups = tuple(groups)
        bad = [group for group in groups if not group or "/" in group]
        if bad or len(set(groups)) != len(groups):
            raise ValueError(f"groups must be distinct non-empty names without '/', got {list(groups)}")
        if groups == self.groups:
            return False
        self.groups = groups
        self.by_group = nn.ModuleList(self._fresh_copy(f"{self.prefix}{group}/") for group in groups)
        device = next(iter(self.all.values())).device
        self.records = nn.ModuleList(SumMetric().to(device) for _ in groups)
        return True

    def _fresh_copy(self, prefix: str) -> MetricCollection:
        copy = self.all.clone(prefix=prefix)
        copy.reset()
        return copy

    def add(
        self,
        scores: Mapping[str, Tensor],
        record_groups: Sequence[str | None],
        score_groups: Mapping[str, Sequence[str | None]],
    ) -> None:
        """Add a batch's per-sample scores to all records and to each record's group.

        Args:
            scores: {metric key: (entries,) scores in [0, 1]}.
            record_groups: the group of each record of the batch (None: in no group).
            score_groups: {metric key: the group of each entry of `scores[key]`} (an entry is a record's
                score; the neighbour metrics score only the records that have neighbours).
        """
        unknown = sorted({group for group in record_groups if group is not None} - set(self.groups))
        if unknown:
            raise ValueError(
                f"records of group(s) {unknown} were scored, but the metrics hold groups {list(self.groups)} "
                "(taken from the eval split when the run was set up)"
            )
        add_scores(self.all, scores)
        self.records_scored.update(float(len(record_groups)))
        for group, metrics, records in zip(self.groups, self.by_group, self.records, strict=True):
            chosen = {}
            for key, values in scores.items():
                mask = torch.tensor([entry == group for entry in score_groups[key]], dtype=torch.bool)
                if mask.any():
                    chosen[key] = values[mask]
            add_scores(metrics, chosen)
            records.update(float(sum(entry == group for entry in record_groups)))

    def logged(self) -> Iterator[tuple[str, Metric]]:
        """(logged name, metric) of every metric to log: those of all records that have been updated (the
        neighbour metrics exist only on data with neighbours, and a metric never updated cannot be
        computed), the count of records scored, the same metrics of every group, and each group's record
        count."""
        updated = [key for key, metric in self.all.items(keep_base=True) if metric.update_count]
        for key in updated:
            yield self.all.prefix + key, self.all[key]
        yield f"{self.prefix}{RECORDS}", self.records_scored
        for group, metrics, records in zip(self.groups, self.by_group, self.records, strict=True):
            for key in updated:
                yield metrics.prefix + key, metrics[key]
            yield f"{self.prefix}{group}/{RECORDS}", records
