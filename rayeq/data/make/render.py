"""The reference renderer: one object in 3DIEBench's scene (rayeq.data.make.scene) with pybullet's TinyRenderer,
on the CPU. An optional extra (`pip install rayeq[pybullet]`): rayeq renders with rayeq.data.make.raster, and this
one stays for the parity check (`rayeq bench render`) and for `--renderer pybullet`.

TinyRenderer only has a white directional light and its own shadows are broken, so a view is
composed from two renders: an albedo pass (ambient only) and a diffuse pass lit from the spot's
direction. The spot's cone, colour and a hard shadow (rays traced with `rayTestBatch` from each lit
pixel towards the light) are applied in numpy.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from rayeq.data.make.scene import SCENE, camera_eye, floor_rgb, light_position, light_rgb
from rayeq.data.make.shapes import Mesh


def _import_pybullet():
    """Import pybullet without the build-time line it prints on import."""
    import ctypes
    import sys

    if "pybullet" in sys.modules:
        return sys.modules["pybullet"]
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            import pybullet

            ctypes.CDLL(None).fflush(None)  # flush C stdio while it still points at /dev/null
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
    return pybullet


class PybulletRenderer:
    """One pybullet DIRECT client; `load(meshes, colors)` then `render(latent)` per view, or
    `render_objects(objects, latents)` as rayeq.data.make.raster.TorchRenderer."""

    def __init__(self, size: int = 64):
        self.p = _import_pybullet()
        self.client = self.p.connect(self.p.DIRECT)
        self.size = size
        self.eye = camera_eye()
        self.view = self.p.computeViewMatrix(self.eye.tolist(), [0, 0, 0], [0, 0, 1], physicsClientId=self.client)
        self.near, self.far = 0.1, 30.0
        self.proj = self.p.computeProjectionMatrixFOV(
            SCENE["camera_fov_deg"], 1.0, self.near, self.far, physicsClientId=self.client
        )
        # pixel centres in normalised device coordinates, for unprojecting the depth buffer
        c = (np.arange(size) + 0.5) / size * 2 - 1
        self.ndc_x, self.ndc_y = np.meshgrid(c, -c)
        pv = np.asarray(self.proj).reshape(4, 4).T @ np.asarray(self.view).reshape(4, 4).T
        self.inv_pv = np.linalg.inv(pv)
        self.bodies: list[int] = []
        self.body_colors: list[np.ndarray] = []
        self.floor = -1

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.p.disconnect(self.client)

    def load(self, meshes: list[Mesh], colors: np.ndarray) -> None:
        """Replace the scene's object; colors: (n_slots, 3) RGB in [0, 1]."""
        p, cid = self.p, self.client
        p.resetSimulation(physicsClientId=cid)
        floor_vis = p.createVisualShape(
            p.GEOM_BOX, halfExtents=[12, 12, 0.005], rgbaColor=[1, 1, 1, 1], physicsClientId=cid
        )
        self.floor = p.createMultiBody(0, -1, floor_vis, [0, 0, SCENE["floor_z"] - 0.005], physicsClientId=cid)
        self.bodies, self.body_colors = [], []
        for m in meshes:
            kw = dict(vertices=m.vertices.tolist(), indices=m.faces.ravel().tolist(), physicsClientId=cid)
            vis = p.createVisualShape(p.GEOM_MESH, normals=m.normals.tolist(), rgbaColor=[*colors[m.slot], 1.0], **kw)
            col = p.createCollisionShape(p.GEOM_MESH, flags=p.GEOM_FORCE_CONCAVE_TRIMESH, **kw)
            self.bodies.append(p.createMultiBody(0, col, vis, [0, 0, 0], physicsClientId=cid))
            self.body_colors.append(np.asarray(colors[m.slot], np.float32))

    def render_objects(self, objects: list[tuple[list[Mesh], np.ndarray]], latents: np.ndarray, masks: bool = False):
        """(B, V, 7) latents of B (meshes, colours) objects -> (B, V, size, size, 3) uint8 [, (B, V, size, size) bool
        silhouettes]."""
        images, sil = [], []
        for (meshes, colors), lats in zip(objects, latents, strict=True):
            self.load(meshes, colors)
            for lat in lats:
                images.append(self.render(lat))
                sil.append(self.last_mask)
        shape = (len(objects), len(latents[0]), self.size, self.size)
        img = np.stack(images).reshape(*shape, 3)
        return (img, np.stack(sil).reshape(shape)) if masks else img

    def render(self, latent: np.ndarray) -> np.ndarray:
        """-> (size, size, 3) uint8 image of the loaded object under `latent`."""
        p, cid, s = self.p, self.client, self.size
        quat = p.getQuaternionFromEuler([float(a) for a in latent[:3]])  # extrinsic xyz, as scipy
        for b in self.bodies:
            p.resetBasePositionAndOrientation(b, [0, 0, 0], quat, physicsClientId=cid)
        light = light_position(float(latent[4]), float(latent[5]))
        # One diffuse pass lit from the spot's direction. Each body has one colour, so its albedo is
        # known from the segmentation mask and n.l = lit / albedo; the floor's n.l is computed exactly.
        _, _, lit, depth, seg = p.getCameraImage(
            s,
            s,
            self.view,
            self.proj,
            lightDirection=light.tolist(),
            lightAmbientCoeff=0.0,
            lightDiffuseCoeff=1.0,
            lightSpecularCoeff=0.0,
            renderer=p.ER_TINY_RENDERER,
            physicsClientId=cid,
        )
        lit = np.asarray(lit, np.float32).reshape(s, s, 4)[..., :3] / 255.0
        depth = np.asarray(depth, np.float64).reshape(s, s)
        seg = np.asarray(seg).reshape(s, s)

        on_floor = seg == self.floor
        albedo = np.zeros((s, s, 3), np.float32)
        on_object = np.zeros((s, s), bool)
        for body, rgb in zip(self.bodies, self.body_colors, strict=True):
            mask = seg == body
            albedo[mask] = rgb
            on_object |= mask
        self.last_mask = on_object  # the object's silhouette, for the parity check
        world = self._unproject(depth)  # (s, s, 3)
        to_light = light - world
        dist = np.linalg.norm(to_light, axis=-1, keepdims=True)
        to_light /= dist
        # spot cone: angle between the light's axis (towards the origin) and the ray to the point
        axis = -light / np.linalg.norm(light)
        cos_angle = -(to_light @ axis)
        half = SCENE["light_cone"] / 2
        inner = half * (1 - SCENE["light_cone_blend"])
        cone = np.clip((cos_angle - np.cos(half)) / (np.cos(inner) - np.cos(half)), 0, 1)
        cone = cone * cone * (3 - 2 * cone)  # smoothstep edge

        diffuse = np.zeros((s, s), np.float32)
        diffuse[on_floor] = np.clip(to_light[on_floor, 2], 0, 1)
        ratio = lit.sum(-1) / np.maximum(albedo.sum(-1), 1e-3)
        diffuse[on_object] = np.clip(ratio[on_object], 0, 1)

        shadow = np.zeros((s, s), bool)
        candidates = (cone > 0) & (diffuse > 0) & (on_floor | on_object)
        if candidates.any() and self.bodies:
            # only segments passing within the object's bounding sphere (radius 0.5) can be blocked
            pts, dirs, lens = world[candidates], to_light[candidates], dist[candidates, 0]
            t = np.clip(-(pts * dirs).sum(-1), 0, lens)
            closest = np.linalg.norm(pts + t[:, None] * dirs, axis=-1)
            near = closest < 0.5 + 1e-3
            idx = np.flatnonzero(candidates)[near]
            starts = pts[near] + 0.02 * dirs[near]
            ends = np.broadcast_to(light, starts.shape)
            blocked = []
            for i in range(0, len(starts), 16384):  # rayTestBatch takes at most 16384 rays a call
                hits = p.rayTestBatch(starts[i : i + 16384], ends[i : i + 16384], numThreads=1, physicsClientId=cid)
                blocked += [h[0] >= 0 for h in hits]
            shadow.flat[idx] = blocked

        albedo[on_floor] = floor_rgb(float(latent[3]))
        spot = (SCENE["light_intensity"] * cone * diffuse * ~shadow)[..., None] * light_rgb(float(latent[6]))
        img = albedo * (SCENE["ambient"] + spot)  # beyond the floor albedo is 0: black, as 3DIEBench's world
        return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)

    def _unproject(self, depth: np.ndarray) -> np.ndarray:
        z_ndc = 2 * depth - 1
        pts = np.stack([self.ndc_x, self.ndc_y, z_ndc, np.ones_like(z_ndc)], -1) @ self.inv_pv.T
        return pts[..., :3] / pts[..., 3:]
