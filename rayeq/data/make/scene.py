"""3DIEBench's scene, shared by both renderers: constants, latents, camera, spot light, part colours.

Scene (method.md section 3): object at the origin, rotated by extrinsic xyz Euler angles in
[-pi/2, pi/2]; floor at z = -1 with hue h_f (HSV s=0.6, v=0.6); camera at distance 2.5, elevation
pi/4, looking at the origin; a spot light at radius 4 aimed at the origin, at polar angle theta in
[0, pi/4] and azimuth phi in [0, 2 pi], cone pi/8, hue h_l (HSV s=1, v=0.8).
"""

from __future__ import annotations

import colorsys

import numpy as np

# 3DIEBench scene constants (kept in meta.json of every generated set)
SCENE = {
    "camera_distance": 2.5,
    "camera_elevation": float(np.pi / 4),
    "camera_fov_deg": 40.0,
    "floor_z": -1.0,
    "floor_saturation": 0.6,
    "floor_value": 0.6,
    "light_radius": 4.0,
    "light_theta_max": float(np.pi / 4),
    "light_cone": float(np.pi / 8),
    "light_cone_blend": 0.15,
    "light_saturation": 1.0,
    "light_value": 0.8,
    "ambient": 0.45,
    "light_intensity": 1.1,
    "rotation_range": float(np.pi / 2),
}
LATENT_NAMES = ["rot_x", "rot_y", "rot_z", "floor_hue", "light_theta", "light_phi", "light_hue"]
OBJECT_RADIUS = 0.5  # objects are scaled to a bounding-box diagonal of 1 around the origin (shapes.normalise)


def sample_latent(g: np.random.Generator) -> np.ndarray:
    """One view's 7 latents in 3DIEBench's order."""
    r = SCENE["rotation_range"]
    return np.array(
        [
            *g.uniform(-r, r, 3),
            g.uniform(0, 1),
            g.uniform(0, SCENE["light_theta_max"]),
            g.uniform(0, 2 * np.pi),
            g.uniform(0, 1),
        ],
        dtype=np.float32,
    )


def light_position(theta, phi) -> np.ndarray:
    """The spot light's position: (3,) for one view, (N, 3) for arrays of N angles."""
    rad = SCENE["light_radius"]
    return rad * np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1)


def floor_rgb(hue) -> np.ndarray:
    """The floor's RGB in [0, 1] for a hue (3,), or for an array of N hues (N, 3)."""
    return _hsv(hue, SCENE["floor_saturation"], SCENE["floor_value"])


def light_rgb(hue) -> np.ndarray:
    """The spot light's RGB in [0, 1] for a hue (3,), or for an array of N hues (N, 3)."""
    return _hsv(hue, SCENE["light_saturation"], SCENE["light_value"])


def _hsv(hue, s: float, v: float) -> np.ndarray:
    h = np.asarray(hue, np.float64)
    return np.array([colorsys.hsv_to_rgb(float(x), s, v) for x in h.reshape(-1)]).reshape(*h.shape, 3)


def camera_eye() -> np.ndarray:
    d, el = SCENE["camera_distance"], SCENE["camera_elevation"]
    return np.array([d * np.cos(el), 0.0, d * np.sin(el)])


def random_colors(g: np.random.Generator, n: int = 3) -> np.ndarray:
    """Per-object part colours, independent of the class: random hue, moderate saturation/value."""
    return np.array(
        [colorsys.hsv_to_rgb(g.uniform(0, 1), g.uniform(0.3, 0.9), g.uniform(0.55, 0.95)) for _ in range(n)]
    )
