"""Image augmentations whose every parameter is recorded, so a view can be re-made from its
parameters and a probe can regress them.

A view = resized crop -> horizontal flip -> rotation + translation -> colour jitter (brightness,
contrast, saturation, hue, in that fixed order) -> grayscale -> Gaussian blur. Each family can be
switched off and has a `strength` (config `augment.<family>.strength`) that scales its range; at
strength 1 the ranges are those of arXiv 2503.18753: rotation +-45 deg, brightness/contrast/
saturation +-0.4, hue +-0.1, blur sigma 0.1-2, translation +-10 px at 224 px (scaled to the size).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from rayeq.config import AugmentConfig

PARAM_NAMES = [
    "crop_top",
    "crop_left",
    "crop_height",
    "crop_width",  # fractions of the source image
    "flip",  # 0 or 1
    "angle",  # degrees, clockwise as displayed (torchvision affine), about the image centre
    "translate_x",
    "translate_y",  # pixels at the output size, right and down
    "brightness",
    "contrast",
    "saturation",  # multiplicative factors (1 = unchanged)
    "hue",  # shift in turns, [-0.5, 0.5] (0 = unchanged)
    "grayscale",  # 0 or 1
    "blur_sigma",  # 0 = no blur
]
IDENTITY = np.array([0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0], np.float32)
P_COLOR, P_BLUR, P_FLIP, P_GRAY = 0.8, 0.5, 0.5, 0.2  # probabilities at strength 1 (SimCLR's)
# The paper's four transformation families -> their indices into PARAM_NAMES (what the transforms protocol regresses)
FAMILIES = {"rotation": [5], "color": [8, 9, 10, 11], "blur": [13], "translation": [6, 7]}


def family_scales(size: int) -> dict[str, list[float]]:
    """Each family's parameters' half-range at strength 1 (translation in pixels at `size`), to put the regression
    targets on one scale: angle 45 deg, shift 10/224 of the side, brightness/contrast/saturation 0.4, hue 0.1, blur
    sigma 1 (its range 0.1-2 centred)."""
    t = 10 / 224 * size
    return {"rotation": [45.0], "color": [0.4, 0.4, 0.4, 0.1], "blur": [1.0], "translation": [t, t]}


def target_key(family: str) -> str:
    """The batch key of a family's relative parameters (what `relative_targets` makes)."""
    return f"aug_{family}"


def relative_targets(p1: np.ndarray, p2: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """Image pairs' transformation targets, as 3D pairs have rel_rotation: per family, view 2's parameters minus
    view 1's over the family's scale (`family_scales`), (B, k) float32 under `target_key(family)`. In the transforms
    protocol view 1 is the untouched image, so these are the parameters of g (shifted and scaled)."""
    scales = family_scales(size)
    return {
        target_key(f): ((p2[:, idx] - p1[:, idx]) / np.asarray(scales[f], np.float32)).astype(np.float32)
        for f, idx in FAMILIES.items()
    }


def enabled_families(cfg: AugmentConfig) -> list[str]:
    """The transformation families a training's pairs vary (on, strength above 0): the others' targets are 0."""
    return [f for f in FAMILIES if cfg.varies(f)]


def sample_params(
    g: np.random.Generator, cfg: AugmentConfig, src_hw: tuple[int, int], size: int, photometric_only: bool = False
) -> np.ndarray:
    """Draw one view's parameters (len(PARAM_NAMES),) for a source image of (H, W)."""
    p = IDENTITY.copy()
    h, w = src_hw
    if cfg.crop.enabled and not photometric_only:
        s = cfg.crop.strength
        scale = (max(0.08, 1 - 0.92 * min(s, 1.0)), 1.0)
        p[0:4] = _crop_box(g, h, w, scale, (3 / 4, 4 / 3))
    if cfg.flip.enabled and not photometric_only:
        p[4] = float(g.random() < P_FLIP * min(cfg.flip.strength, 1.0))
    if cfg.rotation.enabled and not photometric_only:
        p[5] = g.uniform(-45, 45) * cfg.rotation.strength
    if cfg.translation.enabled and not photometric_only:
        t = 10 / 224 * size * cfg.translation.strength
        p[6:8] = g.uniform(-t, t, 2)
    if cfg.color.enabled and g.random() < P_COLOR:
        s = cfg.color.strength
        p[8:11] = np.clip(1 + g.uniform(-0.4 * s, 0.4 * s, 3), 0.0, None)
        p[11] = np.clip(g.uniform(-0.1 * s, 0.1 * s), -0.5, 0.5)
    if cfg.grayscale.enabled:
        p[12] = float(g.random() < min(P_GRAY * cfg.grayscale.strength, 1.0))
    if cfg.blur.enabled and g.random() < P_BLUR:
        p[13] = g.uniform(0.1, 0.1 + 1.9 * cfg.blur.strength)
    return p


DISCRETE = [4, 12]  # flip, grayscale: no state between off and on


def interpolate_params(p1: np.ndarray, p2: np.ndarray, t: float) -> np.ndarray:
    """The parameters a fraction `t` of the way from view 1's (`p1`) to view 2's (`p2`): every continuous parameter
    (crop box, angle, shift, jitter factors, hue, blur sigma) linearly, flip and grayscale from the nearer view."""
    p = ((1 - t) * p1 + t * p2).astype(np.float32)
    p[DISCRETE] = (p1 if t < 0.5 else p2)[DISCRETE]
    return p


def _crop_box(g, h, w, scale, ratio):
    """torchvision RandomResizedCrop's sampling, as fractions (top, left, height, width)."""
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * g.uniform(*scale)
        ar = math.exp(g.uniform(*log_r))
        cw = int(round(math.sqrt(target * ar)))
        ch = int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(g.integers(0, h - ch + 1))
            left = int(g.integers(0, w - cw + 1))
            return top / h, left / w, ch / h, cw / w
    return 0.0, 0.0, 1.0, 1.0  # fall back to the whole image


def apply_params(img: torch.Tensor, p: np.ndarray, size: int) -> torch.Tensor:
    """(3, H, W) uint8 + parameters -> (3, size, size) uint8. Deterministic: the same parameters
    always give the same view."""
    _, h, w = img.shape
    top, left = int(round(p[0] * h)), int(round(p[1] * w))
    ch, cw = max(1, int(round(p[2] * h))), max(1, int(round(p[3] * w)))
    out = TF.resized_crop(img, top, left, ch, cw, [size, size], antialias=True)
    if p[4] > 0.5:
        out = TF.horizontal_flip(out)
    if p[5] != 0 or p[6] != 0 or p[7] != 0:
        out = TF.affine(
            out,
            angle=float(p[5]),
            translate=[float(p[6]), float(p[7])],
            scale=1.0,
            shear=[0.0, 0.0],
            interpolation=TF.InterpolationMode.BILINEAR,
        )
    if p[8] != 1:
        out = TF.adjust_brightness(out, float(p[8]))
    if p[9] != 1:
        out = TF.adjust_contrast(out, float(p[9]))
    if p[10] != 1:
        out = TF.adjust_saturation(out, float(p[10]))
    if p[11] != 0:
        out = TF.adjust_hue(out, float(p[11]))
    if p[12] > 0.5:
        out = TF.rgb_to_grayscale(out, num_output_channels=3)
    if p[13] > 0:
        k = min(2 * math.ceil(3 * float(p[13])) + 1, size - (1 - size % 2))
        out = TF.gaussian_blur(out, [k, k], [float(p[13])] * 2)
    return out


def resize(img: torch.Tensor, size: int) -> torch.Tensor:
    if img.shape[-1] == size and img.shape[-2] == size:
        return img
    return TF.resize(img, [size, size], antialias=True)
