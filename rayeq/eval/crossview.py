"""What xrecon's decoder uses, as a picture: held-out pairs decoded from their own views and with each input of the
decoder swapped for another pair's (`rayeq eval RUN --cross-view-grid PNG`). A row that looks like the row "own
views" says the decoder did not need what was swapped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rayeq.config import RECON_METHODS, ConfigError
from rayeq.data.feed.normalize import denormalize
from rayeq.data.schema import DataError
from rayeq.losses import resize_target
from rayeq.methods.xrecon import XRecon, mask_cells
from rayeq.rundir import load_checkpoint


@torch.no_grad()
def cross_view_rows(method: XRecon, batch: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """(title, (B, 3, r, r) normalised images) rows: the inputs, the target, the reconstruction from the pair's own
    views, then one reconstruction per swap (another pair's input: the batch rolled by one)."""
    f1, f2 = method.backbone(batch["view1"])[0], method.backbone(batch["view2"])[0]
    size = method.decoder.out_size
    small = lambda x: resize_target(x, size)  # noqa: E731
    if method.intermediate:
        t = batch["mid_t"]
        fmaps = {1: f1, 2: f2}
        return [
            ("view 1 (content, code)", small(batch["view1"])),
            ("view 2 (code)", small(batch["view2"])),
            ("target: between them", small(batch["mid"])),
            ("own views", method.reconstruct_between(fmaps, t)),
            ("view 1 swapped", method.reconstruct_between(fmaps, t, {1: f1.roll(1, dims=0)})),
            ("view 2 swapped", method.reconstruct_between(fmaps, t, {2: f2.roll(1, dims=0)})),
        ]
    tv = method.targets[0]
    fmaps = {1: f1, 2: f2}
    if method.target_mask > 0:  # as trained: the target encoded with cells hidden
        fmaps[tv] = method.backbone(mask_cells(batch[f"view{tv}"], method.target_mask, seed=0))[0]
    ov = 3 - tv
    return [
        (f"target: view {tv}", small(batch[f"view{tv}"])),
        (f"other view: {ov}", small(batch[f"view{ov}"])),
        ("own views", method.reconstruct(fmaps, tv)),
        ("other view swapped", method.reconstruct(fmaps, tv, fmaps[ov].roll(1, dims=0))),
        ("target swapped", method.reconstruct({tv: fmaps[tv].roll(1, dims=0), ov: fmaps[ov]}, tv)),
    ]


def grid_picture(rows: list[tuple[str, torch.Tensor]], mean, std, scale: int = 3):
    """A PIL image: one titled row per entry, the pairs side by side, each picture enlarged `scale` times."""
    from PIL import Image, ImageDraw

    tiles = [np.concatenate(list(denormalize(x, mean, std).permute(0, 2, 3, 1).numpy()), axis=1) for _, x in rows]
    strip = np.concatenate(tiles, axis=0)  # (rows*r, B*r, 3) uint8
    r = rows[0][1].shape[-1]
    body = Image.fromarray(strip).resize((strip.shape[1] * scale, strip.shape[0] * scale), Image.NEAREST)
    label_w = 170
    img = Image.new("RGB", (label_w + body.width, body.height), "white")
    img.paste(body, (label_w, 0))
    draw = ImageDraw.Draw(img)
    for i, (title, _) in enumerate(rows):
        draw.text((6, i * r * scale + r * scale // 2 - 6), title, fill="black")
    return img


def write_cross_view_grid(
    path: str | Path, out: str | Path, pairs: int = 8, overwrite: bool = False, log=print
) -> Path:
    """The picture for the checkpoint (or run's latest) at `path`, from the first `pairs` held-out pairs."""
    from rayeq.data.feed.pipeline import pair_loader, resolve_data_dir, to_model_batch

    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{str(out)!r} exists; pass --overwrite to replace it")
    loaded = load_checkpoint(path)
    if loaded.cfg.method.name not in RECON_METHODS:
        raise ConfigError(
            f"--cross-view-grid needs an xrecon or between checkpoint; {str(loaded.path)!r} is {loaded.cfg.method.name}"
        )
    method = loaded.encoder()
    data_dir = resolve_data_dir(loaded.cfg)
    mean, std = loaded.norm_stats(data_dir)
    raw = next(iter(pair_loader(loaded.cfg, "val", pairs, 0)))
    batch = to_model_batch(raw, mean, std)
    img = grid_picture(cross_view_rows(method, batch), mean, std)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    log(
        f"wrote {out}: {pairs} held-out pairs of {loaded.path}, decoded from their own views and with each input "
        "swapped for another pair's"
    )
    return out
