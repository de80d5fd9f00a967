"""One streaming pass over a finished store: metric means, mean difference maps, timing, first batch.

Memory holds one shard plus running sums (metric sums, difference-map sums per target class) and the
first shard for the figures.  Batches are visited in order, so the numbers do not depend on how many
processes wrote the shards.  Non-finite metric values are left out of a mean and counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from xcf.evaluate.metrics import MetricsTable
from xcf.result import CounterfactualResult
from xcf.scale.batches import IMAGE_FIELDS
from xcf.scale.store import ShardStore, StoreError
from xcf.scale.stream import result_from_shard

__all__ = ["StoreSummary", "load_results", "summarise_store"]


@dataclass
class StoreSummary:
    """What a finished store says, reduced: everything an audit report shows.

    Attributes:
        table: metric means per method over every input.
        mean_maps: ``{method: {target class: mean x' - x}}`` over the whole data set.
        first: ``{method: result}`` of the first batch (for figures).
        images: number of inputs.
        timing: throughput over the processes that wrote the store (empty if unknown).
        config: the store's configuration.
        non_finite: ``{method: {metric: count}}`` of values left out of the means.
    """

    table: MetricsTable
    mean_maps: dict[str, dict[int, Tensor]]
    first: dict[str, CounterfactualResult]
    images: int
    timing: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    non_finite: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self, store: ShardStore) -> dict[str, Any]:
        """Plain values for ``summary.json``."""
        return {
            "images": self.images,
            "batches": store.num_batches,
            "batch_size": self.config.get("batch_size"),
            "methods": list(self.table.rows),
            "metrics": self.table.to_dict(),
            "non_finite": self.non_finite,
            "throughput": self.timing,
            "store": str(store.root),
            "config": self.config,
        }


def summarise_store(store: ShardStore, names: Optional[Sequence[str]] = None,
                    world_size: Optional[int] = None) -> StoreSummary:
    """Reduce a finished store to a :class:`StoreSummary` in one pass over its shards.

    Args:
        store: a store whose every batch is finished.
        names: the methods to summarise (default: every method of the store's configuration).
        world_size: count only the timing records of a run with this many processes.
    """
    missing = store.missing()
    if missing:
        raise StoreError(f"{store.root} is unfinished: batches {missing[:10]} have no shard; run the audit again "
                         "to finish it")
    methods: dict[str, str] = store.config.get("methods", {})
    names = list(names or methods)
    sums: dict[str, dict[str, float]] = {m: {} for m in names}
    counts: dict[str, dict[str, int]] = {m: {} for m in names}
    bad: dict[str, dict[str, int]] = {m: {} for m in names}
    map_sum: dict[str, dict[int, Tensor]] = {m: {} for m in names}
    map_n: dict[str, dict[int, int]] = {m: {} for m in names}
    first: Optional[dict[str, Any]] = None
    rows = 0
    for _, arrays in store.iter_batches():
        if first is None:
            first = arrays
        rows += arrays["index"].shape[0]
        target = torch.from_numpy(arrays["target"])
        for m in names:
            s = methods[m]
            for key, v in arrays.items():
                if not key.startswith(s + "/") or key.split("/", 1)[1] in IMAGE_FIELDS:
                    continue
                metric = key.split("/", 1)[1]
                v = v.astype(np.float64).reshape(-1)
                ok = np.isfinite(v)
                sums[m][metric] = sums[m].get(metric, 0.0) + float(v[ok].sum())
                counts[m][metric] = counts[m].get(metric, 0) + int(ok.sum())
                if not ok.all():
                    bad[m][metric] = bad[m].get(metric, 0) + int((~ok).sum())
            diff = (torch.from_numpy(arrays[f"{s}/counterfactual"]).double()
                    - torch.from_numpy(arrays["input"]).double())
            for k in torch.unique(target).tolist():
                sel = target == k
                map_sum[m][k] = map_sum[m].get(k, 0) + diff[sel].sum(0)
                map_n[m][k] = map_n[m].get(k, 0) + int(sel.sum())
    if first is None:
        raise StoreError(f"{store.root} has no finished shards to summarise")
    table = MetricsTable({m: {k: sums[m][k] / counts[m][k] if counts[m][k] else float("nan") for k in sums[m]}
                          for m in names}, {m: rows for m in names}, nonfinite={m: v for m, v in bad.items() if v})
    mean_maps = {m: {k: (map_sum[m][k] / map_n[m][k]).float() for k in sorted(map_sum[m])} for m in names}
    return StoreSummary(table, mean_maps, {m: result_from_shard(first, methods[m]) for m in names}, rows,
                        _read_timing(store, world_size), dict(store.config), {m: v for m, v in bad.items() if v})


def load_results(store: ShardStore, names: Optional[Sequence[str]] = None) -> dict[str, CounterfactualResult]:
    """Every method's results over the whole store, in data-set order (holds them all in memory)."""
    methods: dict[str, str] = store.config.get("methods", {})
    parts: dict[str, list[CounterfactualResult]] = {m: [] for m in (names or methods)}
    for _, arrays in store.iter_batches():
        for m in parts:
            parts[m].append(result_from_shard(arrays, methods[m]))
    return {m: CounterfactualResult.concat(rs) for m, rs in parts.items()}


def _read_timing(store: ShardStore, world_size: Optional[int]) -> dict[str, Any]:
    files = sorted(store.root.glob("timing-rank*.json"))
    stats = []
    for p in files:
        try:
            stats.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    if world_size is not None:
        stats = [s for s in stats if s.get("world_size") == world_size and s.get("rank", 0) < world_size]
    if not stats:
        return {}
    phases = ("data", "search", "metrics", "write")
    loop = sum(s.get("loop", 0.0) for s in stats)
    wall = max(s.get("setup", 0.0) + s.get("loop", 0.0) for s in stats)
    images = sum(s.get("images", 0) for s in stats)
    return {
        "processes": len(stats),
        "images": images,
        "wall_s": wall,
        "images_per_s": images / wall if wall > 0 else float("nan"),
        "loop_images_per_s": images / max(s.get("loop", 0.0) for s in stats) if loop > 0 else float("nan"),
        "shares": {p: (sum(s.get(p, 0.0) for s in stats) / loop if loop > 0 else float("nan")) for p in phases},
        "seconds": {p: sum(s.get(p, 0.0) for s in stats) for p in (*phases, "setup", "loop")},
    }
