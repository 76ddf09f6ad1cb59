"""Run under torchrun: ``coat train ARGS...`` where only rank 1's loss turns NaN, at its second step.

torchrun --nproc-per-node 2 tests/ddp_nonfinite_worker.py train --data DIR --output OUT ...
"""

import sys

import torch

from coat.cli import main
from coat.train.classify import ClassificationTask

real_batch_loss = ClassificationTask.batch_loss
steps = 0


def nan_on_rank_1(*args):
    global steps
    loss, count = real_batch_loss(*args)
    steps += 1
    if torch.distributed.get_rank() == 1 and steps == 2:
        loss = loss * float("nan")
    return loss, count


if __name__ == "__main__":
    ClassificationTask.batch_loss = nan_on_rank_1
    sys.exit(main(sys.argv[1:]))
