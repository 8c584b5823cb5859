"""rayeq's renderer: 3DIEBench's scene (rayeq.data.make.scene) rasterised in PyTorch, batched over objects and views,
on the CPU or on a GPU.

One call renders every view of a batch of objects. Each (object, view) pair is an *instance*; every instance's
triangles go through one z-buffer rasteriser:

- a triangle is projected, its screen bounding box enumerated pixel by pixel (the objects' triangles cover a few
  pixels each, so this is a few times the object's pixel count), each pixel tested against the edge functions;
- the nearest fragment of each pixel wins (`scatter_reduce` amin on depth, ties to the higher triangle index), and its
  perspective-correct barycentrics give the world point and the interpolated normal;
- the floor (z = -1) is the camera rays' intersection with the plane, exact per pixel;
- the spot light shades as in the pybullet renderer: the cone with a smoothstep edge, the light's colour, Lambert's
  n.l (the floor's from the light's position, the object's along the light's direction); hard shadows come from a
  shadow map: the object rasterised from the light into a depth map over the object's bounding sphere, a lit point
  in shadow when it lies behind that depth.

Every operation is elementwise or a gather/scatter over one instance's own pixels, so an object's pixels do not
depend on the other objects of its batch: a data set's bytes are the same whatever the batch size or the number
of processes, for a given device. The pixel grid follows pybullet's TinyRenderer (pixels sampled at integer viewport
coordinates), so both renderers see the same silhouettes (`rayeq bench data` measures it).
"""

from __future__ import annotations

import numpy as np
import torch

from rayeq.data.make.scene import OBJECT_RADIUS, SCENE, camera_eye, floor_rgb, light_position, light_rgb
from rayeq.data.make.shapes import Mesh

SHADOW_BIAS = 0.02  # as the pybullet renderer's shadow rays, which start 0.02 from the surface


def rotation_matrices(euler: np.ndarray) -> np.ndarray:
    """(N, 3) extrinsic xyz Euler angles -> (N, 3, 3), as scipy's Rotation.from_euler("xyz") and pybullet."""
    x, y, z = (euler[:, i].astype(np.float64) for i in range(3))
    cx, sx, cy, sy, cz, sz = np.cos(x), np.sin(x), np.cos(y), np.sin(y), np.cos(z), np.sin(z)
    return np.stack(
        [
            np.stack([cy * cz, sx * sy * cz - cx * sz, cx * sy * cz + sx * sz], -1),
            np.stack([cy * sz, sx * sy * sz + cx * cz, cx * sy * sz - sx * cz], -1),
            np.stack([-sy, sx * cy, cx * cy], -1),
        ],
        -2,
    )


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1)  # elementwise, not a BLAS call: the same bits whatever the batch size


def _look_at(eye: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """(N, 3) eyes looking at the origin -> (N, 3, 3) rows right, up, forward."""
    f = -eye / eye.norm(dim=-1, keepdim=True)
    r = torch.linalg.cross(f, up, dim=-1)
    r = r / r.norm(dim=-1, keepdim=True)
    u = torch.linalg.cross(r, f, dim=-1)
    return torch.stack([r, u, f], -2)


def _to_view(p: torch.Tensor, eye: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """World points (..., 3) -> camera coordinates (right, up, depth); eye and basis broadcast against p."""
    d = p - eye
    return torch.stack([_dot(d, basis[..., 0, :]), _dot(d, basis[..., 1, :]), _dot(d, basis[..., 2, :])], -1)


def _project(p: torch.Tensor, eye, basis, focal, size: int, shift: tuple[float, float]):
    """World points (..., 3) -> pixel coordinates (..., 2) and camera depth (...). `shift` places the pixel grid:
    (0, -1) is TinyRenderer's (pixel j at viewport x = j, rows flipped), (-0.5, -0.5) pixel centres."""
    v = _to_view(p, eye, basis)
    z = v[..., 2]
    x = (v[..., 0] / z * focal + 1) * size / 2 + shift[0]
    y = (1 - v[..., 1] / z * focal) * size / 2 + shift[1]
    return torch.stack([x, y], -1), z


TINY_GRID = (0.0, -1.0)
TEXEL_CENTRES = (-0.5, -0.5)


def rasterize(xy: torch.Tensor, depth: torch.Tensor, inst: torch.Tensor, n_inst: int, size: int, cull: bool = True):
    """Z-buffer rasterisation of T screen-space triangles into n_inst images of size x size.

    `cull`: back faces are not drawn. The objects' faces are counter-clockwise seen from outside (shapes.Mesh), so a
    triangle with a positive area on this y-down grid faces away; where the surface is closed, or its openings lie
    inside another part (a mug's handle), a nearer front face hides it anyway. Halves the work; tests/test_render.py
    checks that every class renders the same without it. Triangles under 0.005 pixels of area are dropped, as
    TinyRenderer drops them: the silhouettes are then pybullet's, pixel for pixel.

    xy: (T, 3, 2) vertex positions in pixel units, the pixel (i, j) sampled at x = j, y = i; depth: (T, 3) camera
    depth (> 0); inst: (T,) the image each triangle belongs to. Returns, per pixel of the (n_inst, size, size) grid
    flattened: the winning triangle (-1 where none), its perspective-correct barycentrics (n, 3) and its depth.
    """
    dev = xy.device
    n_pix = n_inst * size * size
    tri_out = torch.full((n_pix,), -1, dtype=torch.long, device=dev)
    bary_out = torch.zeros((n_pix, 3), dtype=xy.dtype, device=dev)
    depth_out = torch.full((n_pix,), float("inf"), dtype=xy.dtype, device=dev)
    if len(xy) == 0:
        return tri_out, bary_out, depth_out
    a, b, c = xy[:, 0], xy[:, 1], xy[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    lo = torch.ceil(xy.amin(1)).clamp(0, size - 1).long()
    hi = torch.floor(xy.amax(1)).clamp(-1, size - 1).long()
    skip = (xy.amax(1) < 0).any(-1) | (xy.amin(1) > size - 1).any(-1) | (area.abs() <= 1e-2) | (cull & (area > 0))
    w = (hi[:, 0] - lo[:, 0] + 1).clamp(min=0)
    h = (hi[:, 1] - lo[:, 1] + 1).clamp(min=0)
    count = torch.where(skip, 0, w * h)
    total = int(count.sum())
    if total == 0:
        return tri_out, bary_out, depth_out
    # edge k's barycentric as a plane over the screen, w_k = A x + B y + C, already divided by the area
    area = torch.where(skip, torch.ones_like(area), area)
    coef = []
    for p0, p1 in ((b, c), (c, a), (a, b)):
        ex, ey = p1[:, 0] - p0[:, 0], p1[:, 1] - p0[:, 1]
        coef += [-ey, ex, ey * p0[:, 0] - ex * p0[:, 1]]
    coef = torch.stack(coef, -1) / area[:, None]  # (T, 9)
    tri = torch.repeat_interleave(torch.arange(len(xy), device=dev), count, output_size=total)
    start = torch.cumsum(count, 0) - count
    local = torch.arange(total, device=dev) - start.index_select(0, tri)
    wt = w.index_select(0, tri)
    py = torch.div(local, wt, rounding_mode="floor")
    px = lo[:, 0].index_select(0, tri) + (local - py * wt)
    py = py + lo[:, 1].index_select(0, tri)
    pxf, pyf = px.to(xy.dtype)[:, None], py.to(xy.dtype)[:, None]
    cf = coef.index_select(0, tri).view(-1, 3, 3)
    bary = cf[:, :, 0] * pxf + cf[:, :, 1] * pyf + cf[:, :, 2]  # (N, 3)
    keep = torch.nonzero((bary >= 0).all(-1)).squeeze(1)
    tri, bary = tri.index_select(0, keep), bary.index_select(0, keep)
    key = (inst.index_select(0, tri) * size + py.index_select(0, keep)) * size + px.index_select(0, keep)
    inv_z = bary / depth.index_select(0, tri)  # perspective correction
    z = 1.0 / inv_z.sum(-1)
    depth_out.scatter_reduce_(0, key, z, reduce="amin")
    front = torch.nonzero(z == depth_out.index_select(0, key)).squeeze(1)
    key, tri, z, inv_z = (x.index_select(0, front) for x in (key, tri, z, inv_z))
    tri_out.scatter_reduce_(0, key, tri, reduce="amax")
    win = torch.nonzero(tri == tri_out.index_select(0, key)).squeeze(1)
    bary_out.index_copy_(0, key.index_select(0, win), (inv_z * z[:, None]).index_select(0, win))
    return tri_out, bary_out, depth_out


class TorchRenderer:
    """Renders batches of objects on `device`: `render_objects(objects, latents)`, objects a list of (meshes,
    colours) (shapes.make_object's meshes, scene.random_colors' (slots, 3) colours), latents (B, V, 7). The shadow
    map is `shadow_size` texels square (default: the image's size, which already samples the object 2.5 times as
    finely as the image does)."""

    def __init__(self, size: int = 64, device: str | torch.device = "cpu", shadow_size: int | None = None,
                 cull: bool = True):  # fmt: skip
        self.size = size
        self.cull = cull
        self.device = torch.device(device)
        self.shadow_size = shadow_size or size
        dt = torch.float32
        self.dtype = dt
        eye = torch.tensor(camera_eye(), dtype=dt, device=self.device)
        self.eye = eye
        self.basis = _look_at(eye[None], torch.tensor([[0.0, 0.0, 1.0]], dtype=dt, device=self.device))[0]
        self.focal = 1.0 / float(np.tan(np.radians(SCENE["camera_fov_deg"]) / 2))
        # camera rays through the pixels (TinyRenderer's grid: x = j, y = i in viewport units, y flipped)
        j = torch.arange(size, dtype=dt, device=self.device)
        ndc_x = 2 * j / size - 1
        ndc_y = 1 - 2 * (j + 1) / size
        dx = ndc_x[None, :].expand(size, size) / self.focal
        dy = ndc_y[:, None].expand(size, size) / self.focal
        rays = dx[..., None] * self.basis[0] + dy[..., None] * self.basis[1] + self.basis[2]
        rays = rays.reshape(-1, 3)  # (size*size, 3), unnormalised: depth 1 along the view axis
        # the floor (z = floor_z, 24 x 24 around the origin) where each camera ray meets it
        t_floor = (SCENE["floor_z"] - eye[2]) / rays[:, 2]
        self.floor_point = eye + t_floor[:, None] * rays
        fp = self.floor_point
        self.on_floor = ((t_floor > 0) & (fp[:, 0].abs() <= 12) & (fp[:, 1].abs() <= 12)).to(dt)

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=self.dtype, device=self.device)

    def _pack(self, objects: list[tuple[list[Mesh], np.ndarray]]):
        verts, norms, faces, colors, owner, base = [], [], [], [], [], 0
        for b, (meshes, cols) in enumerate(objects):
            for m in meshes:
                verts.append(m.vertices)
                norms.append(m.normals)
                faces.append(m.faces + base)
                colors.append(np.repeat(np.asarray(cols[m.slot], np.float64)[None], len(m.faces), 0))
                owner.append(np.full(len(m.faces), b))
                base += len(m.vertices)

        def t(x, dtype=None):
            return torch.as_tensor(np.concatenate(x), dtype=dtype or self.dtype, device=self.device)

        return t(verts), t(norms), t(faces, torch.long), t(colors), t(owner, torch.long)

    # -- rendering ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def render_objects(self, objects: list[tuple[list[Mesh], np.ndarray]], latents: np.ndarray, masks: bool = False):
        """(B, V, 7) latents of B (meshes, colours) objects -> (B, V, size, size, 3) uint8 [, (B, V, size, size) bool
        silhouettes]."""
        latents = np.asarray(latents, np.float64)
        n_obj, n_views = latents.shape[:2]
        if len(objects) != n_obj:
            raise ValueError(f"{len(objects)} objects but latents for {n_obj}")
        dev, dt, s = self.device, self.dtype, self.size
        n_inst = n_obj * n_views
        lat = latents.reshape(n_inst, 7)
        rot = self._tensor(rotation_matrices(lat[:, :3]))  # (I, 3, 3)
        light = self._tensor(light_position(lat[:, 4], lat[:, 5]))  # (I, 3)
        floor_color, light_color = self._tensor(floor_rgb(lat[:, 3])), self._tensor(light_rgb(lat[:, 6]))

        verts, norms, faces, face_rgb, owner = self._pack(objects)
        # every instance (object b, view v) = b * n_views + v gets its object's triangles, rotated
        n_faces = len(faces)
        views = torch.arange(n_views, device=dev)
        t_inst = (owner[None, :] * n_views + views[:, None]).reshape(-1)  # (V * F,), view-major
        t_face = torch.arange(n_faces, device=dev).repeat(n_views)
        R = rot[t_inst]  # (T, 3, 3)
        tri_v = verts[faces[t_face]]  # (T, 3, 3) object space
        tri_n = norms[faces[t_face]]
        world = (R[:, None, :, :] * tri_v[:, :, None, :]).sum(-1)  # R @ v, elementwise
        normal = (R[:, None, :, :] * tri_n[:, :, None, :]).sum(-1)

        # camera pass: the object's pixels
        xy, z = _project(world, self.eye, self.basis, self.focal, s, TINY_GRID)
        tri_id, bary, _ = rasterize(xy, z, t_inst, n_inst, s, self.cull)
        obj = torch.nonzero(tri_id >= 0).squeeze(1)  # flat (instance, pixel) indices of object pixels
        o_tri = tri_id.index_select(0, obj)
        o_bary = bary.index_select(0, obj)[:, :, None]
        o_point = (world.index_select(0, o_tri) * o_bary).sum(1)
        o_normal = (normal.index_select(0, o_tri) * o_bary).sum(1)
        o_normal = o_normal / o_normal.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        o_inst = torch.div(obj, s * s, rounding_mode="floor")
        # Lambert on the object: its interpolated vertex normal, lit along the light's direction from the origin
        # (TinyRenderer's directional light in the pybullet renderer)
        light_dir = light / light.norm(dim=-1, keepdim=True)
        o_diffuse = _dot(o_normal, light_dir.index_select(0, o_inst)).clamp(0, 1)

        # every pixel: the floor point along its ray, replaced by the object's point where the object is
        n_pix = n_inst * s * s
        point = self.floor_point.expand(n_inst, -1, -1).reshape(n_pix, 3).clone()
        point[obj] = o_point
        on_object = torch.zeros(n_pix, dtype=torch.bool, device=dev)
        on_object[obj] = True
        to_light = light[:, None, :] - point.view(n_inst, s * s, 3)
        to_light = to_light / to_light.norm(dim=-1, keepdim=True)
        cos_angle = -_dot(to_light, -light_dir[:, None, :])
        half = SCENE["light_cone"] / 2
        inner = half * (1 - SCENE["light_cone_blend"])
        cone = ((cos_angle - np.cos(half)) / (np.cos(inner) - np.cos(half))).clamp(0, 1)
        cone = (cone * cone * (3 - 2 * cone)).reshape(n_pix)
        diffuse = to_light[..., 2].clamp(0, 1).reshape(n_pix) * self.on_floor.repeat(n_inst)  # the floor's normal: +z
        diffuse[obj] = o_diffuse

        shadow = self._shadows(world, t_inst, light, point, (cone > 0) & (diffuse > 0))
        albedo = (floor_color[:, None, :] * self.on_floor[None, :, None]).expand(n_inst, s * s, 3).reshape(n_pix, 3)
        albedo = albedo.clone()
        albedo[obj] = face_rgb.index_select(0, t_face.index_select(0, o_tri))
        spot = (SCENE["light_intensity"] * cone * diffuse * (~shadow).to(dt)).view(n_inst, s * s, 1)
        spot = spot * light_color[:, None]
        img = albedo.view(n_inst, s * s, 3) * (SCENE["ambient"] + spot)
        img = torch.round(img * 255).clamp(0, 255).to(torch.uint8)
        img = img.reshape(n_obj, n_views, s, s, 3).cpu().numpy()
        return (img, on_object.reshape(n_obj, n_views, s, s).cpu().numpy()) if masks else img

    def _shadows(self, world, t_inst, light, point, lit) -> torch.Tensor:
        """Whether each lit pixel's point is hidden from the light by the object: a shadow map per instance, from
        the light towards the origin, its field of view fitted to the object's bounding sphere."""
        dev, dt, r = self.device, self.dtype, self.shadow_size
        shadow = torch.zeros(len(point), dtype=torch.bool, device=dev)
        if not bool(lit.any()):
            return shadow
        n_inst = len(light)
        dist = light.norm(dim=-1)
        # up: z, unless the light looks almost straight down, then x
        up = torch.tensor([0.0, 0.0, 1.0], dtype=dt, device=dev).expand(n_inst, 3)
        steep = (light[:, 2] / dist) > 0.99
        up = torch.where(steep[:, None], torch.tensor([1.0, 0.0, 0.0], dtype=dt, device=dev), up)
        basis = _look_at(light, up)  # (I, 3, 3)
        tan_half = OBJECT_RADIUS * 1.02 / torch.sqrt(dist**2 - OBJECT_RADIUS**2)
        focal = 1.0 / tan_half  # (I,)

        xy, z = _project(
            world, light[t_inst][:, None], basis[t_inst][:, None], focal[t_inst][:, None], r, TEXEL_CENTRES
        )
        _, _, depth_map = rasterize(xy, z, t_inst, n_inst, r, self.cull)
        idx = torch.nonzero(lit).squeeze(1)
        inst = torch.div(idx, self.size * self.size, rounding_mode="floor")
        pxy, pz = _project(point.index_select(0, idx), light.index_select(0, inst), basis.index_select(0, inst),
                           focal.index_select(0, inst), r, TEXEL_CENTRES)  # fmt: skip
        tx, ty = torch.round(pxy[:, 0]).long(), torch.round(pxy[:, 1]).long()
        inside = (tx >= 0) & (tx < r) & (ty >= 0) & (ty < r)
        key = (inst * r + ty.clamp(0, r - 1)) * r + tx.clamp(0, r - 1)
        blocked = inside & (pz > depth_map.index_select(0, key) + SHADOW_BIAS)
        shadow[idx] = blocked
        return shadow
