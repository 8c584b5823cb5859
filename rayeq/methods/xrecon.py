"""The paper's method (Wang, Krajsek, Scharr, arXiv 2412.03314): a base SSL loss on the invariant
part, plus a reconstruction of one view from a cross-attention blend of both views' tokens.

Defaults (our reading, see docs/METHOD.md): queries = the pooled equivariant vector of the view to
reconstruct (its pose, colour, lighting) at every position plus a fixed position code, keys/values =
invariant tokens of the other view (its content), parameter-free attention with a residual, then a
small conv decoder. Queries from the target's own spatial tokens (`target.equi`) let the decoder
autoencode the target and ignore the other view (measured on one H200: the reconstruction term fell
from ~1 to 0.02 in 1,481 steps); `validation_terms` measures how much the other view contributes.
The decoder is only used in pre-training; `encode` returns the backbone's pooled features.
"""

from __future__ import annotations

import math

import torch

from rayeq.config import STEM_STRIDES, ExperimentConfig, token_width
from rayeq.losses import reconstruction_loss, resize_target
from rayeq.methods.base import StepOutput
from rayeq.methods.joint import JointEmbedding
from rayeq.models import ConvDecoder, CrossAttention, split_features, to_tokens


def position_code(h: int, w: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Fixed 2D sin-cos position code (1, h*w, dim): a quarter of the channels each for sin/cos of the
    row and of the column, at geometrically spaced frequencies (the ViT/MAE code, base 100 for grids of a
    few positions; no parameters)."""
    quarter = dim // 4
    freq = 1.0 / (100.0 ** (torch.arange(quarter, device=device, dtype=torch.float32) / max(quarter, 1)))
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        angle = coord[:, None] * freq[None, :]
        parts += [angle.sin(), angle.cos()]
    code = torch.cat(parts, dim=1)
    code = torch.nn.functional.pad(code, (0, dim - code.shape[1]))  # widths not divisible by 4
    return code[None].to(dtype or torch.float32)


class XRecon(JointEmbedding):
    ssl_part = "inv"
    validation_term_names = ("recon", "recon_other_view")

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg, ssl_loss=cfg.method.base)
        x, d = cfg.method.xattn, cfg.method.decoder
        dims = [token_width(s, cfg.model) for s in (x.query, x.key, x.value)]
        self.xattn = CrossAttention(*dims, x.heads, x.learned_projections, x.attn_dim, x.residual)
        fmap_size = math.ceil(cfg.data.image_size / STEM_STRIDES[cfg.model.stem])
        self.decoder = ConvDecoder(self.xattn.out_dim, fmap_size, d.recon_size, d.width, d.depth)
        self.targets = (1, 2) if cfg.method.symmetric else (cfg.method.target_view,)
        self.recon_weight = cfg.loss.recon_weight

    def _tokens(self, spec: str, target: dict[str, torch.Tensor], source: dict[str, torch.Tensor], hw):
        view, part = spec.split(".")
        parts = target if view == "target" else source
        if not part.endswith("_pooled"):
            return parts[part]
        tok = parts[part.removesuffix("_pooled")]  # (B, N, C): its mean is the pooled representation's part
        return tok.mean(dim=1, keepdim=True) + position_code(*hw, tok.shape[-1], tok.device, tok.dtype)

    def reconstruct(self, fmaps: dict[int, torch.Tensor], target_view: int, source_fmap=None) -> torch.Tensor:
        """Decode view `target_view` from the blend of both views' tokens -> (B, 3, r, r). `source_fmap`
        replaces the other view's feature map (the cross-view check passes another pair's)."""
        parts = {}
        source_view = 3 - target_view
        for v, fmap in ((target_view, fmaps[target_view]), (source_view, fmaps[source_view])):
            if v == source_view and source_fmap is not None:
                fmap = source_fmap
            tok = to_tokens(fmap)  # (B, N, C)
            inv, equi = split_features(tok, self.inv_dim, dim=-1)
            parts[v] = {"inv": inv, "equi": equi, "full": tok}
        tgt, src = parts[target_view], parts[source_view]
        x = self.cfg.method.xattn
        b, _, h, w = fmaps[target_view].shape
        q, k, v = (self._tokens(s, tgt, src, (h, w)) for s in (x.query, x.key, x.value))
        blended = self.xattn(q, k, v)
        blended_map = blended.transpose(1, 2).reshape(b, -1, h, w)  # (B, d, h, w)
        return self.decoder(blended_map)

    @torch.no_grad()
    def validation_terms(self, batch, out1, out2) -> dict[str, torch.Tensor]:
        """The cross-view check on held-out pairs: the reconstruction error with the other view's features
        (`recon`) and with those of another pair's other view, i.e. a random image (`recon_other_view`).
        A ratio recon_other_view / recon near 1 means the decoder rebuilds the target without the other
        view (an autoencoder); the cross-view task makes it clearly above 1."""
        fmaps = {1: out1[0], 2: out2[0]}
        t = self.targets[0]
        target = None
        terms = {}
        for name, source in (("recon", None), ("recon_other_view", fmaps[3 - t].roll(1, dims=0))):
            pred = self.reconstruct(fmaps, t, source)
            target = resize_target(batch[f"view{t}"], pred.shape[-1]) if target is None else target
            terms[name] = reconstruction_loss(pred, target)
        return terms

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
        ssl = losses.pop("total")  # the base loss's parts stay the logged terms: they and recon add up to total
        losses["recon"] = self.recon_weight * recon
        losses["total"] = ssl + losses["recon"]
        return StepOutput(
            losses=losses,
            representations=(r1, r2),
            reconstruction=pred.detach(),
            recon_target=target,
            diagnostics={"recon_mse": recon.detach(), "ssl": ssl.detach()},
        )
