"""Run under torchrun: one DDP optimizer step, each process on its half of a fixed batch.

torchrun --nproc-per-node 2 tests/ddp_step_worker.py OUT.safetensors PER_PROCESS_BATCH
"""

import sys

import torch
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel

from coat.train.classify import train_step
from coat.train.distributed import init_distributed
from coat.train.optim import build_optimizer

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from ddp_reference import make_batch, make_model


def main() -> None:
    out, per_process = sys.argv[1], int(sys.argv[2])
    info = init_distributed(torch.device("cpu"))
    model = make_model()
    images, targets = make_batch(2 * per_process)
    mine = slice(info.rank * per_process, (info.rank + 1) * per_process)
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.05)  # built on the bare model, as the training loop does
    train_step(DistributedDataParallel(model), images[mine], targets[mine], optimizer, label_smoothing=0.1)
    if info.rank == 0:
        grads = {f"grad.{n}": p.grad.contiguous() for n, p in model.named_parameters()}  # averaged over the ranks
        save_file({**{k: v.contiguous() for k, v in model.state_dict().items()}, **grads}, out)


if __name__ == "__main__":
    main()
