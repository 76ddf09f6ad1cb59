"""Where the model looks: per-scale feature energy and a Grad-CAM of the top class.

Grad-CAM uses scale 4 (stride 32), or the coarsest scale whose grid is at least 2x2 when the
input is so small that scale 4 is a single token (e.g. 32x32 models).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .data.datasets import load_rgb
from .errors import InputNotFoundError
from .extras import pyplot, require
from .files import atomic_write, refuse_overwrite
from .inference import LoadedModel
from .models.layers import tokens_to_nchw

FIGURE_INCHES = (18.0, 3.6)
FIGURE_DPI = 100  # the PNG is 1800 x 360 pixels


def explain(loaded: LoadedModel, image_path: str | Path, output: str | Path, overwrite: bool = False) -> dict:
    """Write the explanation PNG (an existing ``output`` only with ``overwrite``); returns the top class and the
    PNG path."""
    if not Path(image_path).is_file():
        raise InputNotFoundError(f"{image_path} does not exist; pass an image file")
    refuse_overwrite([Path(output)], overwrite)
    require("plots")
    model = loaded.model.eval()
    x = model.preprocessing.transforms()(load_rgb(str(image_path))).unsqueeze(0)  # [1, 3, S, S]
    tokens, grids = model.forward_tokens(x)
    cam_scale = max((i for i, (h, w) in enumerate(grids) if min(h, w) >= 2), default=0)
    tokens[cam_scale].retain_grad()
    logits = model.forward_head(model.head_features(tokens))  # [1, classes]
    probs = logits.detach().softmax(-1)[0]
    top = int(probs.argmax())
    logits[0, top].backward()
    with torch.no_grad():
        maps = [tokens_to_nchw(t, g)[0] for t, g in zip(tokens, grids)]  # [C, h, w] each, strides 4..32
        energies = [m.norm(dim=0) for m in maps]
        grad = tokens_to_nchw(tokens[cam_scale].grad, grids[cam_scale])[0]  # [C, h, w]
        cam = F.relu((grad.mean(dim=(1, 2))[:, None, None] * maps[cam_scale]).sum(0))
        cam = cam / cam.max().clamp(min=1e-12)
    _plot(
        x[0],
        model.preprocessing.mean,
        model.preprocessing.std,
        energies,
        cam,
        f"{loaded.class_names[top]} ({probs[top]:.1%}), scale {cam_scale + 1}",
        Path(output),
    )
    return {"label": loaded.class_names[top], "index": top, "prob": float(probs[top]), "output": str(output)}


def _plot(
    image: torch.Tensor, mean, std, energies: list[torch.Tensor], cam: torch.Tensor, title: str, output: Path
) -> None:
    plt = pyplot()
    rgb = (image * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]).clamp(0, 1)
    rgb = rgb.permute(1, 2, 0).numpy()
    h, w = rgb.shape[:2]
    fig, axes = plt.subplots(1, 6, figsize=FIGURE_INCHES, dpi=FIGURE_DPI)
    axes[0].imshow(rgb)
    axes[0].set_title("input")
    for i, energy in enumerate(energies):
        axes[i + 1].imshow(energy.numpy(), cmap="magma")
        axes[i + 1].set_title(f"scale {i + 1} energy (stride {4 * 2**i})")
    up = F.interpolate(cam[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    axes[5].imshow(rgb)
    axes[5].imshow(up.numpy(), cmap="jet", alpha=0.45)
    axes[5].set_title(f"Grad-CAM: {title}"[:48])
    for ax in axes:
        ax.axis("off")
    atomic_write(output, lambda tmp: fig.savefig(tmp, dpi=FIGURE_DPI, format="png"))
    plt.close(fig)
