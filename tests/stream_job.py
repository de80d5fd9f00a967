"""A small dataset-scale audit with tiny seeded models, run by the streaming tests as a subprocess.

``python tests/stream_job.py OUT [--images N] [--batch-size B] [--sleep S]`` runs
:func:`xcf.stream.stream_audit` on ``N`` random 1x4x4 images; under ``torchrun`` every rank builds the same
models from the same seed.  ``--sleep`` pauses after each written shard (to kill the run mid-way).
``--pixels D`` makes the images 1xDxD and uses only the pixel method (the memory test).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn
from torch.utils.data import Dataset

import xcf.scale.store
from xcf import AdversarialCounterfactual, DiffeomorphicCounterfactual
from xcf.apps.audit import audit
from xcf.models.flows import realnvp_flow
from xcf.scale.stream import shift_target, stream_audit


class Synthetic(Dataset):
    """Image ``i`` is drawn from a generator seeded with ``i``: no memory held, same items everywhere."""

    def __init__(self, n: int, side: int, classes: int = 3):
        self.n, self.side, self.classes = n, side, classes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(int(i))
        return torch.rand(1, self.side, self.side, generator=g), int(i % self.classes)


def models(side: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(side * side, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
    flow = realnvp_flow((1, side, side), levels=256, hidden=8, blocks_per_scale=1, scales=1).eval() if side == 4 else None
    return clf, flow


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--pixels", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--no-report", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    clf, flow = models(args.pixels)
    explainers = {"adversarial": AdversarialCounterfactual(clf)}
    if flow is not None:
        explainers = {"diffeomorphic": DiffeomorphicCounterfactual(clf, flow), **explainers}
    train = (torch.rand(60, 1, args.pixels, args.pixels, generator=torch.Generator().manual_seed(99)),
             torch.arange(60) % 3)
    if args.sleep:
        write = xcf.scale.store.ShardStore.write

        def slow_write(self, batch, arrays):
            path = write(self, batch, arrays)
            time.sleep(args.sleep)
            return path

        xcf.scale.store.ShardStore.write = slow_write
    run = stream_audit if args.no_report else audit
    outcome = run(clf, Synthetic(args.images, args.pixels), shift_target(1, 3), explainers, args.out,
                  train=train, batch_size=args.batch_size, steps=args.steps, seed=0, config={"job": "tests/stream_job.py"})
    print(f"computed {len(outcome.computed)} skipped {len(outcome.skipped)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
