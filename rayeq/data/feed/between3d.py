"""Design B's target on the built-in 3D set: the object rendered a fraction t of the way from one view to the other.

A synth3d set can be re-rendered exactly: each object's meshes and part colours follow from the set's seed and the
object's index (`data.make.objects.object_scene`), and its pixels do not depend on the objects rendered with it. So
the image between two views is made, not approximated: the rotation slerped (the geodesic from R₁ to R₂), the floor
and light hues along the shorter arc of the hue circle, the light's polar angle linearly and its azimuth along the
shorter arc, then rendered by the set's own renderer (PyTorch, this process's CPU). At t = 0 and 1 it reproduces the
stored views (tested). 3DIEBench's meshes are not in rayeq, so a converted 3DIEBench set cannot serve this target.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from rayeq.data.schema import N_LATENTS, DataError

HUES = (3, 6)  # floor hue, light hue (in [0, 1), cyclic); 4: light theta (linear); 5: light phi (cyclic, 2 pi)


def _arc(a: np.ndarray, b: np.ndarray, t: np.ndarray, period: float) -> np.ndarray:
    """From a towards b along the shorter way round a circle of the given period, a fraction t of the way."""
    d = (b - a + period / 2) % period - period / 2
    return (a + t * d) % period


def between_latents(l1: np.ndarray, l2: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(B, 7) latents of the scenes a fraction t (B,) of the way from l1's to l2's (3DIEBench's latent order)."""
    l1, l2 = np.asarray(l1, np.float64), np.asarray(l2, np.float64)
    t = np.asarray(t, np.float64).reshape(-1)
    r1, r2 = Rotation.from_euler("xyz", l1[:, :3]), Rotation.from_euler("xyz", l2[:, :3])
    step = Rotation.from_rotvec((r1.inv() * r2).as_rotvec() * t[:, None])  # the geodesic's first t of the way
    out = np.empty_like(l1)
    out[:, :3] = (r1 * step).as_euler("xyz")
    for k in HUES:
        out[:, k] = _arc(l1[:, k], l2[:, k], t, 1.0)
    out[:, 4] = (1 - t) * l1[:, 4] + t * l2[:, 4]
    out[:, 5] = _arc(l1[:, 5], l2[:, 5], t, 2 * np.pi)
    return out.astype(np.float32)


class SceneRenderer:
    """Renders objects of one synth3d set at any latents. `meta`: the set's meta.json (or its decoded copy's)."""

    def __init__(self, meta: dict, cache_objects: int = 4096):
        from rayeq.data.make.synth3d import GENERATOR_VERSION

        if meta.get("source") != "synth3d":
            raise DataError(
                f"the image between two 3D views is rendered from the object's meshes, which only a synth3d set "
                f"can give (this set is {meta.get('source')!r}); use synth3d data or image data"
            )
        if meta.get("generator_version") != GENERATOR_VERSION:
            raise DataError(
                f"this synth3d set was made by generator {meta.get('generator_version')!r}, not {GENERATOR_VERSION!r}: "
                "its objects cannot be re-rendered exactly; render it again with `rayeq data synth3d --out DIR`"
            )
        self.classes, self.per_class = list(meta["classes"]), int(meta["objects_per_class"])
        self.seed, self.views = int(meta["seed"]), int(meta["views_per_object"])
        # rendered at the size the set was rendered at (a decoded copy names it), then resized as its views were
        self.size = int((meta.get("decoded_from") or {}).get("size") or meta["image_size"])
        self.renderer = None
        self.objects: dict[str, tuple] = {}
        self.cache_objects = cache_objects

    def scene(self, object_id: str, stored: np.ndarray | None = None) -> tuple:
        """An object's (meshes, colours) from its id; `stored`: its (V, 7) stored latents, checked against the
        regenerated ones (a set whose objects this code does not regenerate exactly is refused)."""
        if object_id in self.objects:
            return self.objects[object_id]
        from rayeq.data.make.objects import object_scene

        name, _, number = object_id.rpartition("_")
        if name not in self.classes or not number.isdigit() or int(number) >= self.per_class:
            raise DataError(f"object {object_id!r} is not an object of this synth3d set ({self.classes[:3]}...)")
        index = self.classes.index(name) * self.per_class + int(number)
        seq = np.random.SeedSequence(self.seed, spawn_key=(index,))  # synth3d.generate's SeedSequence(seed).spawn
        meshes, colors, latents = object_scene((0, name, seq, self.views))
        if stored is not None and not np.allclose(latents, np.asarray(stored).reshape(-1, N_LATENTS), atol=1e-5):
            raise DataError(f"object {object_id!r}: stored latents are not the ones its seed gives: not re-rendered")
        if len(self.objects) >= self.cache_objects:
            self.objects.pop(next(iter(self.objects)))
        self.objects[object_id] = (meshes, colors)
        return meshes, colors

    def render(self, scenes: list[tuple], latents: np.ndarray) -> np.ndarray:
        """(B, size, size, 3) uint8: scene b at latents[b] (the set's image size)."""
        if self.renderer is None:
            from rayeq.data.make.objects import make_renderer

            self.renderer = make_renderer("torch", self.size)
        return self.renderer.render_objects(scenes, np.asarray(latents)[:, None, :])[:, 0]
