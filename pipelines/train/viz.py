"""A PNG of predicted vs true next patches for a few images (logged as an MLflow artifact)."""

from __future__ import annotations

from pathlib import Path

import torch

from aim_core import AIM, patchify, unpatchify

__all__ = ["prediction_images", "save_prediction_grid"]


@torch.no_grad()
def prediction_images(model: AIM, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(true, predicted) images (N, 3, H, W) in normalised pixel space, causal next-patch predictions.

    Patch 0 has no prediction and is copied from the input. The target maps its predictions to pixels
    (`Target.predicted_patches`: norm_pixel and kmeans with each true patch's own mean/std, dvae decoded).
    """
    model.eval()
    c = model.config
    images = images.float()
    pred = model(images, None).float()[:, :-1]  # (N, K-1, D), sequence order, predicts positions 1..K-1
    true_p = patchify(images, c.patch_size)[:, model.perm]  # (N, K, P) sequence order
    pred = model.target.predicted_patches(pred, true_p, model.perm, model.inverse, c.grid)
    full = torch.cat([true_p[:, :1], pred], dim=1)[:, model.inverse]  # back to raster
    model.train()
    return images, unpatchify(full, c.patch_size, c.grid)


def save_prediction_grid(model: AIM, images: torch.Tensor, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    true, pred = prediction_images(model, images.cpu() if next(model.parameters()).device.type == "cpu" else images)
    n = true.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(2 * n, 4.2), squeeze=False)
    for i in range(n):
        for row, (img, title) in enumerate(((true[i], "true"), (pred[i], "predicted"))):
            x = img.detach().float().cpu()
            x = (x - x.min()) / (x.max() - x.min() + 1e-8)
            axes[row][i].imshow(x.permute(1, 2, 0).numpy())
            axes[row][i].set_title(title, fontsize=8)
            axes[row][i].axis("off")
    fig.suptitle("next-patch predictions (patch 0 copied)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
