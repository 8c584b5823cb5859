"""Transformation targets between two views of a 3D object (SIE's conventions, with options)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

FLOOR_HUE, LIGHT_HUE = 3, 6  # latent indices (3DIEBench order)


def relative_rotation_quaternion(euler1: np.ndarray, euler2: np.ndarray, canonical: bool = False) -> np.ndarray:
    """Quaternion (x, y, z, w) of R1^-1 * R2 for extrinsic xyz Euler angles (N, 3) -> (N, 4).

    SIE's definition (facebookresearch/SIE, dataset.py): no sign canonicalisation, so q and -q both
    occur. With `canonical`, the sign is chosen so that w >= 0 (q and -q are the same rotation).
    """
    r1 = Rotation.from_euler("xyz", np.asarray(euler1, np.float64).reshape(-1, 3))
    r2 = Rotation.from_euler("xyz", np.asarray(euler2, np.float64).reshape(-1, 3))
    q = (r1.inv() * r2).as_quat()  # (N, 4), x y z w
    if canonical:
        q = np.where(q[:, 3:4] < 0, -q, q)
    return q.astype(np.float32)


COLOR_TARGET_DIMS = {"sie": 2, "cos_sin": 4}  # width of relative_color's output per mode
ROTATION_TARGET_DIMS = 4  # a quaternion (x, y, z, w)


def target_widths(color_target: str, three_d: bool) -> dict[str, int]:
    """The per-pair transformation targets of a data set and their widths (none for image sets)."""
    return {"rel_rotation": ROTATION_TARGET_DIMS, "rel_color": COLOR_TARGET_DIMS[color_target]} if three_d else {}


def relative_color(latent1: np.ndarray, latent2: np.ndarray, mode: str = "sie") -> np.ndarray:
    """Change of floor hue and light hue from view 1 to view 2.

    "sie": raw differences (h2 - h1) of (floor, light) as in SIE (N, 2); they jump at the 0/1 wrap.
    "cos_sin": (cos, sin) of each difference as an angle, continuous on the circle (N, 4).
    """
    l1 = np.asarray(latent1, np.float64).reshape(-1, 7)
    l2 = np.asarray(latent2, np.float64).reshape(-1, 7)
    d = l2[:, [FLOOR_HUE, LIGHT_HUE]] - l1[:, [FLOOR_HUE, LIGHT_HUE]]
    if mode == "sie":
        return d.astype(np.float32)
    if mode == "cos_sin":
        a = 2 * np.pi * d
        return np.stack([np.cos(a[:, 0]), np.sin(a[:, 0]), np.cos(a[:, 1]), np.sin(a[:, 1])], 1).astype(np.float32)
    raise ValueError(f"unknown colour target {mode!r}; choose 'sie' or 'cos_sin'")


def rotation_matrix_xyz(euler: torch.Tensor) -> torch.Tensor:
    """(B, 3) extrinsic xyz Euler angles (3DIEBench's, scipy's "xyz") -> (B, 3, 3) rotation matrices
    R = Rz(c) Ry(b) Rx(a), in torch so that methods can build per-view pose targets on their device."""
    a, b, c = euler.unbind(-1)
    ca, sa, cb, sb, cc, sc = a.cos(), a.sin(), b.cos(), b.sin(), c.cos(), c.sin()
    return torch.stack(
        [
            torch.stack([cc * cb, cc * sb * sa - sc * ca, cc * sb * ca + sc * sa], -1),
            torch.stack([sc * cb, sc * sb * sa + cc * ca, sc * sb * ca - cc * sa], -1),
            torch.stack([-sb, cb * sa, cb * ca], -1),
        ],
        -2,
    )
