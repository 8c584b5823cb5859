"""The paper's method (Wang, Krajsek, Scharr, arXiv 2412.03314): a base SSL loss on the invariant
part, plus a reconstruction of one view from a cross-attention blend of both views' tokens.

Defaults (our reading, see docs/METHOD.md): queries = equivariant tokens of the view to
reconstruct (its pose, colour, lighting), keys/values = invariant tokens of the other view (its
content), parameter-free attention with a residual, then a small conv decoder. The decoder is
only used in pre-training; `encode` returns the backbone's pooled features as for any method.
"""

from __future__ import annotations

import math

import torch

from rayeq.config import STEM_STRIDES, ExperimentConfig, token_width
from rayeq.losses import reconstruction_loss, resize_target
from rayeq.methods.base import StepOutput
from rayeq.methods.joint import JointEmbedding
from rayeq.models import ConvDecoder, CrossAttention, split_features, to_tokens


class XRecon(JointEmbedding):
    ssl_part = "inv"

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg, ssl_loss=cfg.method.base)
        x, d = cfg.method.xattn, cfg.method.decoder
        dims = [token_width(s, cfg.model) for s in (x.query, x.key, x.value)]
        self.xattn = CrossAttention(*dims, x.heads, x.learned_projections, x.attn_dim, x.residual)
        fmap_size = math.ceil(cfg.data.image_size / STEM_STRIDES[cfg.model.stem])
        self.decoder = ConvDecoder(self.xattn.out_dim, fmap_size, d.recon_size, d.width, d.depth)
        self.targets = (1, 2) if cfg.method.symmetric else (cfg.method.target_view,)
        self.recon_weight = cfg.loss.recon_weight

    def _tokens(self, spec: str, target: dict[str, torch.Tensor], source: dict[str, torch.Tensor]):
        view, part = spec.split(".")
        return (target if view == "target" else source)[part]

    def reconstruct(self, fmaps: dict[int, torch.Tensor], target_view: int) -> torch.Tensor:
        """Decode view `target_view` from the blend of both views' tokens -> (B, 3, r, r)."""
        parts = {}
        for v, fmap in fmaps.items():
            tok = to_tokens(fmap)  # (B, N, C)
            inv, equi = split_features(tok, self.inv_dim, dim=-1)
            parts[v] = {"inv": inv, "equi": equi, "full": tok}
        tgt, src = parts[target_view], parts[3 - target_view]
        x = self.cfg.method.xattn
        blended = self.xattn(
            self._tokens(x.query, tgt, src), self._tokens(x.key, tgt, src), self._tokens(x.value, tgt, src)
        )
        b, _, h, w = fmaps[target_view].shape
        blended_map = blended.transpose(1, 2).reshape(b, -1, h, w)  # (B, d, h, w)
        return self.decoder(blended_map)

    def loss_terms(self, batch, out1, out2) -> StepOutput:
        (f1, r1), (f2, r2) = out1, out2
        losses = self.ssl_terms(r1, r2)
        fmaps = {1: f1, 2: f2}
        recon = 0.0
        for t in self.targets:
            pred = self.reconstruct(fmaps, t)
            target = resize_target(batch[f"view{t}"], pred.shape[-1])
            recon = recon + reconstruction_loss(pred, target)
        recon = recon / len(self.targets)
        losses["ssl"] = losses.pop("total")
        losses["recon"] = self.recon_weight * recon
        losses["total"] = losses["ssl"] + losses["recon"]
        return StepOutput(
            losses=losses,
            representations=(r1, r2),
            reconstruction=pred.detach(),
            recon_target=target,
            diagnostics={"recon_mse": recon.detach()},
        )
