"""The epoch's training loss, kept where it is computed and read only at log intervals.

Reading a loss on the host (``loss.item()``, ``if not torch.isfinite(loss)``) waits for the GPU to
finish the step, so the host cannot queue the next one meanwhile. ``LossMonitor.add`` only queues
device ops; ``LossMonitor.read`` sums over all processes in one reduction and reads the result, so
every process sees the same count of non-finite losses at the same step and they stop together
(a process that stopped alone would leave the others waiting in DDP's gradient reduction).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .distributed import DistInfo, all_reduce_sum


@dataclass(frozen=True)
class LossReading:
    """The epoch so far, over all processes."""

    mean_loss: float  # over the samples whose loss was finite
    samples: int
    non_finite: int  # steps whose loss was NaN or infinite, summed over processes


class LossMonitor:
    """Sums ``loss * samples`` and counts non-finite losses on the loss's device."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._sums = torch.zeros(2, dtype=torch.float64, device=device)  # [finite loss * samples, non-finite steps]
        self._samples = 0  # host-side: the batch sizes are known there

    def add(self, loss: torch.Tensor, samples: int) -> None:
        """Account one step's mean loss over ``samples`` samples (no host synchronisation)."""
        loss = loss.detach().double()
        finite = torch.isfinite(loss)
        self._sums += torch.stack([torch.where(finite, loss * samples, 0.0), (~finite).double()])
        self._samples += samples

    def read(self, info: DistInfo) -> LossReading:
        """Everything so far, summed over the processes (a collective: every process calls it at the same step)."""
        samples = torch.tensor([float(self._samples)], dtype=torch.float64).to(self._device)
        totals = all_reduce_sum(torch.cat([self._sums, samples]), info).tolist()
        loss_sum, non_finite, total_samples = totals
        return LossReading(loss_sum / max(1.0, total_samples), int(total_samples), int(non_finite))
