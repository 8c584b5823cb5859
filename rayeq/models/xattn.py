"""Cross-attention that blends the token sets of two views.

Default (method.md, "our choice"): queries are the equivariant tokens of the view to reconstruct,
keys and values the invariant tokens of the other view, no learned parameters, plus a residual to
the queries. With `learned_projections` it becomes standard multi-head attention with Q/K/V/out
projections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    def __init__(
        self,
        q_dim: int,
        k_dim: int,
        v_dim: int,
        heads: int = 1,
        learned_projections: bool = False,
        attn_dim: int = 256,
        residual: bool = True,
    ):
        super().__init__()
        self.heads, self.learned, self.residual = heads, learned_projections, residual
        if learned_projections:
            self.q_proj = nn.Linear(q_dim, attn_dim)
            self.k_proj = nn.Linear(k_dim, attn_dim)
            self.v_proj = nn.Linear(v_dim, attn_dim)
            out = q_dim if residual else attn_dim
            self.out_proj = nn.Linear(attn_dim, out)
            self.out_dim = out
        else:
            if q_dim != k_dim:
                raise ValueError(f"parameter-free attention needs q_dim == k_dim, got {q_dim} and {k_dim}")
            if residual and v_dim != q_dim:
                raise ValueError(f"residual needs v_dim == q_dim, got {v_dim} and {q_dim}")
            for name, d in (("q_dim", q_dim), ("v_dim", v_dim)):
                if d % heads:
                    raise ValueError(f"heads={heads} must divide {name}={d}")
            self.out_dim = v_dim
        if learned_projections and attn_dim % heads:
            raise ValueError(f"heads={heads} must divide attn_dim={attn_dim}")

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape  # (B, N, d) -> (B, H, N, d/H)
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: (B, Nq, q_dim); k: (B, Nk, k_dim); v: (B, Nk, v_dim) -> (B, Nq, out_dim)."""
        queries = q
        if self.learned:
            q, k, v = self.q_proj(q), self.k_proj(k), self.v_proj(v)
        # softmax(Q K^T / sqrt(d_head)) V per head
        out = F.scaled_dot_product_attention(self._split_heads(q), self._split_heads(k), self._split_heads(v))
        out = out.transpose(1, 2).flatten(2)  # (B, Nq, d)
        if self.learned:
            out = self.out_proj(out)
        if self.residual:
            out = out + queries
        return out
