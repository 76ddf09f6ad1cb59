"""The model and batch that the DDP equivalence test uses in both set-ups."""

import torch

import coat


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return coat.create_model("coat_lite_tiny", num_classes=10)


def make_batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 10, (size,), generator=g)
