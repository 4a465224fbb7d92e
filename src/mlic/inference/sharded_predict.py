"""``torchrun ... -m mlic predict``: every rank labels a share of the inputs, rank 0 writes one ordered file.

Inputs are dealt round-robin (input i goes to rank i % world_size) as they stream past, so no rank
needs the whole list. Each rank writes its formatted rows, one JSON string per line, to
``OUTPUT.part<rank>``; after a barrier rank 0 reads the parts round-robin, which restores the
input order exactly, writes the final file and removes the parts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.distributed as dist

from mlic.inference.batch_predict import OutputOptions, PredictSummary, RowFormatter
from mlic.inference.destination import Destination
from mlic.inference.predictor import BasePredictor
from mlic.runtime.distributed import DistInfo


def write_predictions_sharded(
    predictor: BasePredictor,
    paths: Iterable[Path],
    options: OutputOptions,
    *,
    dest: Destination,
    info: DistInfo,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = False,
) -> PredictSummary:
    """Label this rank's share of ``paths``; rank 0 merges every rank's rows into ``dest`` in input order."""
    output = dest.path
    formatter, summary = RowFormatter(options, predictor.class_names), PredictSummary()
    start = time.perf_counter()
    shard = (p for i, p in enumerate(dest.guard(paths)) if i % info.world_size == info.rank)
    part = output.with_name(f"{output.name}.part{info.rank}")
    with open(part, "w", encoding="utf-8") as f:
        for pred in predictor.predict_paths(
            shard, batch_size=batch_size, num_workers=num_workers, progress=progress and info.is_main
        ):
            summary.predicted += 1
            summary.failed += pred.error is not None
            f.write(json.dumps(formatter.row(pred)) + "\n")
    counts = torch.tensor([summary.predicted, summary.failed], dtype=torch.int64)
    dist.all_reduce(counts)  # also the barrier: every part is complete after it
    summary.predicted, summary.failed = (int(x) for x in counts)
    if info.is_main:
        _merge(dest, formatter, info.world_size)
    dist.barrier()
    summary.seconds = time.perf_counter() - start
    return summary


def _merge(dest: Destination, formatter: RowFormatter, world_size: int) -> None:
    output = dest.path
    parts = [output.with_name(f"{output.name}.part{r}") for r in range(world_size)]
    with ExitStack() as stack, open(dest.partial, "w", encoding="utf-8", newline="") as out:
        readers = [stack.enter_context(open(p, encoding="utf-8")) for p in parts]
        out.write(formatter.begin())
        # shards differ in length by at most one, the longer ones first: stop at the first empty turn
        turn = 0
        while (line := readers[turn % world_size].readline()) != "":
            out.write(json.loads(line))
            turn += 1
        out.write(formatter.end())
    dest.commit()
    for p in parts:
        p.unlink()
