"""The paper's synthetic-transformation protocol (arXiv 2412.03314, as described in 2503.18753):
apply g to an image, encode the original and the transformed image with the frozen encoder, and
regress g's parameters from the two representations with an MLP; R² per transformation family
and their mean. Ranges: rotation +-45 deg, colour jitter brightness/contrast/saturation +-0.4 and
hue +-0.1, Gaussian blur sigma 0.1-2, translation +-10 px at 224 px (scaled to the image size)."""

from __future__ import annotations

import numpy as np
import torch

from rayeq.data.feed.augment import FAMILIES, IDENTITY, apply_params, resize
from rayeq.data.feed.normalize import normalize
from rayeq.data.schema import decode_image, open_dataset, read_split_table
from rayeq.eval.protocols import ProtocolSettings, regression

# metric -> the regression's figure. The headline `r2` is R² per parameter, then averaged (scikit-learn's uniform
# average): a mean predictor scores 0 on every family. SIE's global R² (one mean over all target entries), made
# for the rotation quaternion, stays beside it as `r2_global`: on colour jitter it credits a mean predictor with
# ~0.8, because brightness, contrast and saturation sit near 1 and hue near 0.
HEADLINE = {"r2": "r2_per_dim", "r2_global": "r2"}


def sample_family(g: np.random.Generator, family: str, size: int) -> np.ndarray:
    p = IDENTITY.copy()
    if family == "rotation":
        p[5] = g.uniform(-45, 45)
    elif family == "color":
        p[8:11] = g.uniform(0.6, 1.4, 3)
        p[11] = g.uniform(-0.1, 0.1)
    elif family == "blur":
        p[13] = g.uniform(0.1, 2.0)
    elif family == "translation":
        t = 10 / 224 * size
        p[6:8] = g.uniform(-t, t, 2)
    return p


@torch.no_grad()
def _encode_split(encoder, data_dir, split, size, mean, std, seed, batch=128):
    g = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    encode = encoder.encode
    feats = {f: ([], []) for f in FAMILIES}  # family -> (features, params)
    pending: list = []

    def flush():
        if not pending:
            return
        r = encode(normalize(torch.stack([t for t, _, _ in pending]), mean, std)).float()
        n = len(pending) // (len(FAMILIES) + 1)
        stride = len(FAMILIES) + 1
        for i in range(n):
            base = r[i * stride]
            for k, fam in enumerate(FAMILIES):
                feats[fam][0].append(torch.cat([base, r[i * stride + 1 + k]]))
                feats[fam][1].append(torch.tensor(pending[i * stride + 1 + k][2][FAMILIES[fam]]))
        pending.clear()

    for shard in open_dataset(data_dir, split)[1]:
        for row in read_split_table(shard, split, ["image"]).to_pylist():
            img = resize(torch.from_numpy(decode_image(row["image"])).permute(2, 0, 1), size)
            pending.append((img, None, IDENTITY))
            for fam in FAMILIES:
                p = sample_family(g, fam, size)
                pending.append((apply_params(img, p, size), fam, p))
            if len(pending) >= batch * (len(FAMILIES) + 1):
                flush()
    flush()
    return {f: (torch.stack(x), torch.stack(y).float()) for f, (x, y) in feats.items()}


def transform_regression(loaded, data_dir, s: ProtocolSettings, log=print, encoder=None):
    """-> (metrics, what a mean predictor scores under the same keys)."""
    cfg = loaded.cfg
    size = cfg.data.image_size
    mean, std = loaded.norm_stats(data_dir)
    encoder = encoder or loaded.encoder()
    log("  transforms: encoding original and transformed images ...")
    tr = _encode_split(encoder, data_dir, "train", size, mean, std, s.seed)
    va = _encode_split(encoder, data_dir, "val", size, mean, std, s.seed + 1)
    out, base = {}, {}
    for fam in FAMILIES:
        res = regression(tr[fam][0], tr[fam][1], va[fam][0], va[fam][1], s)
        for key, src in HEADLINE.items():
            out[f"transforms/{fam}/{key}"], base[f"transforms/{fam}/{key}"] = res[src], res["mean"][src]
        log(
            f"  transforms/{fam}: R² {res['r2_per_dim']:.4f} per dimension (a mean predictor: "
            f"{res['mean']['r2_per_dim']:.4f}); global {res['r2']:.4f} (a mean predictor: {res['mean']['r2']:.4f})"
        )
    for key in HEADLINE:  # the family mean, of the headline and of the global figure
        for d in (out, base):
            d[f"transforms/mean/{key}"] = float(np.mean([d[f"transforms/{fam}/{key}"] for fam in FAMILIES]))
    return out, base
