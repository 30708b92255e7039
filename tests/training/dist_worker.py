"""``resadapter-rt ARGS`` under a launcher, with every rank's trainable-parameter hash gathered after each step.

Rank 0 appends one JSON line per step to ``$HASHES_FILE``: ``[[rank, sha256], ...]`` for all ranks. Used by
test_distributed.py as ``torchrun --nproc_per_node 2 tests/training/dist_worker.py train ...``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import torch

from resadapter_rt.cli import main
from resadapter_rt.training import trainer

real_step = trainer._Run.step


def step_and_gather_hashes(self, batches):
    loss = real_step(self, batches)
    digest = hashlib.sha256()
    for name, parameter in self.trainable:
        digest.update(name.encode() + parameter.detach().cpu().numpy().tobytes())
    gathered = [None] * self.accelerator.world_size
    torch.distributed.all_gather_object(gathered, [self.accelerator.rank, digest.hexdigest()])
    if self.accelerator.main:
        with open(os.environ["HASHES_FILE"], "a", encoding="utf-8") as handle:
            handle.write(json.dumps(gathered) + "\n")
    return loss


if __name__ == "__main__":
    trainer._Run.step = step_and_gather_hashes
    sys.exit(main(sys.argv[1:]))
