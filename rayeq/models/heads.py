"""Projection heads, SIE's hypernetwork predictor and the probe heads (online probes and eval)."""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Sequential):
    """VICReg/SIE expander: [Linear -> BN -> ReLU] * (n-1) -> Linear (no bias)."""

    def __init__(self, in_dim: int, widths: list[int]):
        if not widths:
            raise ValueError("projector needs at least one width")
        layers: list[nn.Module] = []
        dims = [in_dim, *widths]
        for i in range(len(widths) - 1):
            layers += [nn.Linear(dims[i], dims[i + 1]), nn.BatchNorm1d(dims[i + 1]), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-2], dims[-1], bias=False))
        super().__init__(*layers)
        self.out_dim = widths[-1]


class HyperPredictor(nn.Module):
    """SIE's predictor: a hypernetwork maps the transformation q (B, P) to a matrix W(q) (B, d, d);
    the prediction of the second view's equivariant embedding is W(q) @ z_equi_1."""

    def __init__(self, dim: int, param_dim: int = 4, kind: str = "linear", bias: bool = False):
        super().__init__()
        self.dim = dim
        n_out = dim * dim
        if kind == "linear":
            self.hypernet = nn.Linear(param_dim, n_out, bias=bias)
        elif kind == "deep":
            self.hypernet = nn.Sequential(
                nn.Linear(param_dim, param_dim, bias=bias),
                nn.ReLU(),
                nn.Linear(param_dim, param_dim, bias=bias),
                nn.ReLU(),
                nn.Linear(param_dim, n_out, bias=bias),
            )
        else:
            raise ValueError(f"unknown hypernetwork {kind!r}; choose linear or deep")

    def forward(self, z: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        w = self.hypernet(params).view(-1, self.dim, self.dim)  # (B, d_out, d_in)
        return torch.bmm(w, z.unsqueeze(-1)).squeeze(-1)  # (B, d)


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """SIE's regression head: in -> hidden -> hidden -> out with ReLUs."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dim)
    )


def regression_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """A regression probe: `mlp` behind a non-affine BatchNorm (probes must not depend on the features' scale)."""
    return nn.Sequential(nn.BatchNorm1d(in_dim, affine=False), *mlp(in_dim, hidden, out_dim))


def linear_classifier(in_dim: int, num_classes: int) -> nn.Sequential:
    """A linear classifier probe behind a non-affine BatchNorm."""
    return nn.Sequential(nn.BatchNorm1d(in_dim, affine=False), nn.Linear(in_dim, num_classes))
