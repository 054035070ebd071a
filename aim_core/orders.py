"""Autoregressive orders over the patch grid.

An order is a permutation `perm` of the K = gh*gw raster indices: sequence position s holds the patch
at raster index `perm[s]`. `inverse[perm[s]] == s`, so `x_seq[:, inverse]` restores raster order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ORDERS", "Order", "make_order"]

ORDERS = ("raster", "spiral", "checkerboard", "random")


@dataclass(frozen=True)
class Order:
    name: str
    perm: torch.Tensor  # (K,) long: raster index at each sequence position
    inverse: torch.Tensor  # (K,) long: sequence position of each raster index

    def to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Reorder (B, K, ...) from raster order to sequence order."""
        return x[:, self.perm.to(x.device)]

    def to_raster(self, x: torch.Tensor) -> torch.Tensor:
        """Reorder (B, K, ...) from sequence order back to raster order."""
        return x[:, self.inverse.to(x.device)]


def _spiral(gh: int, gw: int) -> list[int]:
    """Start at the centre cell, spiral outwards (right, down, left, up with run lengths 1,1,2,2,...)."""
    r, c = (gh - 1) // 2, (gw - 1) // 2
    out = [r * gw + c]
    moves = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    run, d = 1, 0
    while len(out) < gh * gw:
        for _ in range(2):
            dr, dc = moves[d % 4]
            for _ in range(run):
                r, c = r + dr, c + dc
                if 0 <= r < gh and 0 <= c < gw:
                    out.append(r * gw + c)
            d += 1
        run += 1
    return out


def _checkerboard(gh: int, gw: int) -> list[int]:
    cells = [(r, c) for r in range(gh) for c in range(gw)]
    even = [r * gw + c for r, c in cells if (r + c) % 2 == 0]
    odd = [r * gw + c for r, c in cells if (r + c) % 2 == 1]
    return even + odd


def make_order(name: str, grid: tuple[int, int], seed: int = 0) -> Order:
    """Build one of `ORDERS` for a (gh, gw) patch grid; `random` is one fixed permutation per seed."""
    gh, gw = grid
    k = gh * gw
    if name == "raster":
        perm = torch.arange(k)
    elif name == "spiral":
        perm = torch.tensor(_spiral(gh, gw))
    elif name == "checkerboard":
        perm = torch.tensor(_checkerboard(gh, gw))
    elif name == "random":
        perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    else:
        raise ValueError(f"unknown order {name!r}; choose one of {', '.join(ORDERS)}")
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(k)
    return Order(name, perm.long(), inverse.long())
