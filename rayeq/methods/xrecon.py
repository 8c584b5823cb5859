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

from rayeq.config import ExperimentConfig
from rayeq.losses import reconstruction_loss, resize_target
from rayeq.methods.base import StepOutput
from rayeq.methods.joint import JointEmbedding
from rayeq.models import ConvDecoder, CrossAttention, split_features, to_tokens
from rayeq.models.facts import STEM_STRIDES, token_width


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


MASK_GRID = 8  # method.target_mask hides cells of an 8 x 8 grid


def mask_cells(images: torch.Tensor, fraction: float, grid: int = MASK_GRID, seed: int | None = None) -> torch.Tensor:
    """`images` (B, C, H, W) with round(fraction * grid²) cells of a grid x grid partition set to 0 (the normalised
    mean), a different random set per image (`seed`: the same sets every call)."""
    b, _, h, w = images.shape
    n = round(fraction * grid * grid)
    gen = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
    order = torch.rand(b, grid * grid, generator=gen).argsort(dim=1)
    keep = torch.ones(b, grid * grid)
    keep.scatter_(1, order[:, :n], 0.0)
    # each cell's rows and columns (the last cells take the remainder when H or W is not a multiple of grid)
    rows = (torch.arange(h) * grid // h).clamp(max=grid - 1)
    cols = (torch.arange(w) * grid // w).clamp(max=grid - 1)
    cell = rows[:, None] * grid + cols[None, :]  # (H, W) -> cell index
    mask = keep[:, cell].to(images.device, images.dtype)  # (B, H, W)
    return images * mask[:, None]


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
        self.target_mask = cfg.method.target_mask
        # design B (xrecon + method.intermediate, or between): rebuild the image between the two views
        self.intermediate = bool(cfg.method.between_ts)
        if self.intermediate:
            self.required_keys = (*self.required_keys, "mid", "mid_t")
            self.validation_term_names = ("recon", "recon_view1_swapped", "recon_view2_swapped")
        # design A: the target's pooled equivariant vector -> k numbers -> a scale and a shift of the blended tokens
        self.target_code = None
        if x.target_code:
            self.target_code = torch.nn.Sequential(
                torch.nn.Linear(cfg.model.equi_dim, x.target_code),
                torch.nn.Linear(x.target_code, 2 * self.xattn.out_dim),
            )
            torch.nn.init.zeros_(self.target_code[1].weight)  # starts as the identity: gamma = beta = 0
            torch.nn.init.zeros_(self.target_code[1].bias)

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        """Design C (`method.target_mask`): the target view is encoded with cells of it hidden; the loss still
        rebuilds the whole view, kept as `recon_target<t>`."""
        if self.target_mask > 0:
            self.check_batch(batch)
            t = self.targets[0]
            view = batch[f"view{t}"]
            seed = None if self.training else 0  # validation hides the same cells every time
            batch = {**batch, f"recon_target{t}": view, f"view{t}": mask_cells(view, self.target_mask, seed=seed)}
        return super().forward(batch)

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
        if self.target_code is not None:
            gamma, beta = self.target_code(tgt["equi"].mean(dim=1)).unsqueeze(1).chunk(2, dim=-1)  # (B, 1, d) each
            blended = blended * (1 + gamma) + beta
        blended_map = blended.transpose(1, 2).reshape(b, -1, h, w)  # (B, d, h, w)
        return self.decoder(blended_map)

    def reconstruct_between(
        self, fmaps: dict[int, torch.Tensor], t: torch.Tensor, swapped: dict[int, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Design B: decode the image a fraction `t` (B, 1) of the way from view 1 to view 2 -> (B, 3, r, r). Query:
        (1 - t) x view 1's + t x view 2's pooled equivariant vector, plus the position code; keys and values: view
        1's invariant tokens. `swapped` replaces a view's feature map (the cross-view check passes another pair's)."""
        fmaps = {**fmaps, **(swapped or {})}
        b, _, h, w = fmaps[1].shape
        inv1, equi1 = split_features(to_tokens(fmaps[1]), self.inv_dim, dim=-1)
        _, equi2 = split_features(to_tokens(fmaps[2]), self.inv_dim, dim=-1)
        t = t.to(equi1.dtype).view(b, 1, 1)
        code = (1 - t) * equi1.mean(dim=1, keepdim=True) + t * equi2.mean(dim=1, keepdim=True)  # (B, 1, equi)
        q = code + position_code(h, w, code.shape[-1], code.device, code.dtype)
        blended = self.xattn(q, inv1, inv1)
        return self.decoder(blended.transpose(1, 2).reshape(b, -1, h, w))

    @staticmethod
    def recon_target(batch: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        """The image view `t`'s reconstruction is scored against: the whole view (before any masking)."""
        return batch.get(f"recon_target{t}", batch[f"view{t}"])

    @torch.no_grad()
    def validation_terms(self, batch, out1, out2) -> dict[str, torch.Tensor]:
        """The cross-view check on held-out pairs: the reconstruction error with the other view's features
        (`recon`) and with those of another pair's other view, i.e. a random image (`recon_other_view`).
        A ratio recon_other_view / recon near 1 means the decoder rebuilds the target without the other
        view (an autoencoder); the cross-view task makes it clearly above 1."""
        fmaps = {1: out1[0], 2: out2[0]}
        if self.intermediate:  # each input view replaced in turn by another pair's
            target = resize_target(batch["mid"], self.decoder.out_size)
            return {
                name: reconstruction_loss(self.reconstruct_between(fmaps, batch["mid_t"], swap), target)
                for name, swap in (
                    ("recon", None),
                    ("recon_view1_swapped", {1: fmaps[1].roll(1, dims=0)}),
                    ("recon_view2_swapped", {2: fmaps[2].roll(1, dims=0)}),
                )
            }
        t = self.targets[0]
        if self.target_mask > 0:  # the task as trained: the target encoded with the same share of it hidden
            fmaps[t] = self.backbone(mask_cells(batch[f"view{t}"], self.target_mask, seed=0))[0]
        target = None
        terms = {}
        for name, source in (("recon", None), ("recon_other_view", fmaps[3 - t].roll(1, dims=0))):
            pred = self.reconstruct(fmaps, t, source)
            target = resize_target(self.recon_target(batch, t), pred.shape[-1]) if target is None else target
            terms[name] = reconstruction_loss(pred, target)
        return terms

    def loss_terms(self, batch, out1, out2) -> StepOutput:
        (f1, r1), (f2, r2) = out1, out2
        losses = self.ssl_terms(r1, r2)
        fmaps = {1: f1, 2: f2}
        recon = 0.0
        if self.intermediate:
            pred = self.reconstruct_between(fmaps, batch["mid_t"])
            target = resize_target(batch["mid"], pred.shape[-1])
            recon = reconstruction_loss(pred, target)
        for t in () if self.intermediate else self.targets:
            pred = self.reconstruct(fmaps, t)
            target = resize_target(self.recon_target(batch, t), pred.shape[-1])
            recon = recon + reconstruction_loss(pred, target)
        recon = recon / (1 if self.intermediate else len(self.targets))
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
