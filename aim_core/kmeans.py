"""K-means codebook over image patches, for the `kmeans` target (cluster ids as classes).

The codebook is fitted here (k-means++ seeding, Lloyd iterations, chunked distances) and saved as a
plain tensor artifact (`save_codebook` / `load_codebook`).
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["fit_kmeans", "assign_clusters", "save_codebook", "load_codebook"]


def assign_clusters(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """Nearest centroid id for each row of x (N, D) -> (N,) long."""
    out = []
    c2 = (centroids.float() ** 2).sum(1)
    for part in x.float().split(chunk):
        d = c2[None, :] - 2 * part @ centroids.float().T  # ||x||^2 is constant per row
        out.append(d.argmin(1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    idx = [int(torch.randint(n, (1,), generator=gen))]
    d2 = ((x - x[idx[0]]) ** 2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / n)
        i = int(torch.multinomial(probs, 1, generator=gen))
        idx.append(i)
        d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return x[idx].clone()


def fit_kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Fit k centroids on x (N, D) (N >= k). Returns centroids (k, D) float32. Empty clusters are reseeded."""
    if x.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} samples, got {x.shape[0]}")
    x = x.float()
    gen = torch.Generator().manual_seed(seed)
    centroids = _kmeans_pp(x, k, gen)
    for _ in range(iters):
        ids = assign_clusters(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, ids, x)
        counts = torch.bincount(ids, minlength=k).float()
        empty = counts == 0
        centroids = sums / counts.clamp_min(1)[:, None]
        if empty.any():
            centroids[empty] = x[torch.randint(x.shape[0], (int(empty.sum()),), generator=gen)]
    return centroids


def save_codebook(centroids: torch.Tensor, path: str | Path) -> None:
    torch.save({"centroids": centroids.cpu()}, path)


def load_codebook(path: str | Path) -> torch.Tensor:
    return torch.load(path, map_location="cpu", weights_only=True)["centroids"]
