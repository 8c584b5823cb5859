"""A few optimisation steps of a method on a tiny generated batch, in-process and through the same
`Engine` as `rayeq train`: a smoke test a new user can read. Pairs are smooth random images and a
transformed copy (90-degree rotation and a brightness shift), with the rotation as a quaternion so
SIE runs too, and the quarter-turn count as a class label, the shift as a colour change and the
turns as per-view poses so the supervised ceiling runs too."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from rayeq.config import ExperimentConfig, apply_overrides, from_dict
from rayeq.data.feed.targets import target_widths
from rayeq.runinfo import RunInfo
from rayeq.train.engine import Engine

DEMO_OPTIM = ["optim.scale_lr=false", "optim.warmup_epochs=0"]


def toy_pairs(batch: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 3, 4, 4, generator=g)
    view1 = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)  # smooth
    k = torch.randint(0, 4, (batch,), generator=g)  # quarter turns about the viewing axis
    shift = 0.5 * torch.randn(batch, 1, 1, 1, generator=g)
    view2 = torch.stack([torch.rot90(v, int(n), dims=(1, 2)) for v, n in zip(view1, k, strict=True)]) + shift
    angle = k.float() * math.pi / 2
    rel_rotation = torch.stack(
        [torch.zeros_like(angle), torch.zeros_like(angle), torch.sin(angle / 2), torch.cos(angle / 2)], dim=1
    )  # (B, 4) quaternion (x, y, z, w) about z
    latent1 = torch.zeros(batch, 7)
    latent2 = torch.zeros(batch, 7)
    latent2[:, 2] = angle  # view 2 turned about z (3DIEBench's latent order: rot x, y, z, ...)
    rel_color = torch.cat([shift.view(batch, 1), torch.zeros(batch, 1)], dim=1)  # (B, 2)
    return {
        "view1": view1,
        "view2": view2,
        "rel_rotation": rel_rotation,
        "rel_color": rel_color,
        "label": k,
        "latent1": latent1,
        "latent2": latent2,
    }


def run_demo(cfg: ExperimentConfig, steps: int = 20, batch: int = 16, log=print) -> list[dict[str, float]]:
    """`steps` optimisation steps of the training `Engine` (method + online probes) on one toy batch,
    at a constant learning rate (`optim.lr`, unscaled, no warmup: a few steps are all there is)."""
    cfg = from_dict(apply_overrides(cfg.to_dict(), DEMO_OPTIM))
    torch.manual_seed(cfg.train.seed)
    info = RunInfo(
        n_train=batch,
        n_val=0,
        num_classes=4,
        three_d=True,
        mean=[0.0] * 3,
        std=[1.0] * 3,
        regress=target_widths("sie", three_d=True),
    )  # toy labels: quarter turns 0..3; SIE's colour target
    engine = Engine(cfg, info, "cpu", steps_per_epoch=steps)
    n_params = sum(p.numel() for p in engine.module.method.parameters())
    log(
        f"demo: method={cfg.method.name} backbone={cfg.model.backbone} stem={cfg.model.stem} "
        f"image={cfg.data.image_size}px batch={batch} steps={steps} params={n_params / 1e6:.1f}M"
    )
    pairs = toy_pairs(batch, cfg.data.image_size, seed=cfg.train.seed)  # already normalised floats
    if ts := cfg.method.between_ts:  # design B (between): a toy image between the views, their pixel blend at t
        t = torch.tensor(ts)[torch.arange(batch) % len(ts)].view(batch, 1, 1, 1)
        pairs.update(mid=(1 - t) * pairs["view1"] + t * pairs["view2"], mid_t=t.view(batch, 1))
    history = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        out, _ = engine.step(pairs)
        terms = {k: float(v.detach()) for k, v in out.losses.items()}
        history.append(terms)
        elapsed = time.perf_counter() - t0
        ips = 2 * batch * step / elapsed
        eta = elapsed / step * (steps - step)
        shown = "  ".join(f"{k}={v:.4f}" for k, v in terms.items())
        log(f"step {step:3d}/{steps}  {shown}  [{ips:.0f} img/s, eta {eta:.0f}s]")
    first, last = history[0]["total"], history[-1]["total"]
    change = 100 * (last - first) / first
    log(f"total loss {first:.4f} -> {last:.4f} ({change:+.1f} %) in {time.perf_counter() - t0:.1f}s")
    return history
