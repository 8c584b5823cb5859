"""Procedural 3D object classes for the built-in 3DIEBench-like data set.

ShapeNet is not available offline, so each class is a small shape grammar over mesh primitives with
random proportions and optional parts per instance. Every part has a colour slot (0..2); the colours
themselves are drawn per object, independently of the class, so colour never gives the label away.
Objects are centred and scaled to a bounding-box diagonal of 1, like ShapeNet.

Every class has one canonical frame (z up, its "front" towards +x), as ShapeNet's aligned categories
do, and every class carries a part that breaks its rotational symmetries in that frame (a bottle's
label patch, a rocket's hatch, a table's drawer): a relative rotation is only learnable from images
when each pose looks different. docs/DATA.md has the measurements behind this (generator synth3d-2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

TAU = 2 * np.pi


@dataclass
class Mesh:
    vertices: np.ndarray  # (n, 3) float
    normals: np.ndarray  # (n, 3) unit vectors
    faces: np.ndarray  # (m, 3) int, counter-clockwise seen from outside
    slot: int = 0  # colour slot

    def transformed(self, scale=(1.0, 1.0, 1.0), euler=(0.0, 0.0, 0.0), offset=(0.0, 0.0, 0.0)) -> Mesh:
        s = np.asarray(scale, float)
        rot = Rotation.from_euler("xyz", euler).as_matrix()
        v = (self.vertices * s) @ rot.T + np.asarray(offset, float)
        n = (self.normals / s) @ rot.T  # inverse-transpose of the scale for normals
        n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
        return Mesh(v, n, self.faces.copy(), self.slot)


def _flat(quads_or_tris: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Polygons (each (k, 3), CCW from outside) -> flat-shaded vertices, normals, fan triangles."""
    verts, norms, faces = [], [], []
    base = 0
    for poly in quads_or_tris:
        poly = np.asarray(poly, float)
        n = np.cross(poly[1] - poly[0], poly[2] - poly[0])
        n /= np.linalg.norm(n) + 1e-12
        verts.append(poly)
        norms.append(np.repeat(n[None], len(poly), 0))
        faces += [(base, base + i, base + i + 1) for i in range(1, len(poly) - 1)]
        base += len(poly)
    return np.concatenate(verts), np.concatenate(norms), np.asarray(faces, int)


def box(sx: float = 1.0, sy: float = 1.0, sz: float = 1.0, slot: int = 0) -> Mesh:
    x, y, z = sx / 2, sy / 2, sz / 2
    c = np.array([[-x, -y, -z], [x, -y, -z], [x, y, -z], [-x, y, -z], [-x, -y, z], [x, -y, z], [x, y, z], [-x, y, z]])
    quads = [c[[0, 3, 2, 1]], c[[4, 5, 6, 7]], c[[0, 1, 5, 4]], c[[2, 3, 7, 6]], c[[1, 2, 6, 5]], c[[3, 0, 4, 7]]]
    return Mesh(*_flat(quads), slot)


def extrude(polygon: np.ndarray, depth: float, slot: int = 0) -> Mesh:
    """A 2D polygon (k, 2) in the x-z plane, CCW seen from -y, extruded along y (centred)."""
    p = np.asarray(polygon, float)
    d = depth / 2
    front = np.stack([p[:, 0], np.full(len(p), -d), p[:, 1]], 1)
    back = np.stack([p[:, 0], np.full(len(p), d), p[:, 1]], 1)
    polys = [front, back[::-1]]
    k = len(p)
    for i in range(k):
        j = (i + 1) % k
        polys.append(np.array([front[j], front[i], back[i], back[j]]))
    return Mesh(*_flat(polys), slot)


def lathe(radii, heights, segments: int = 16, slot: int = 0) -> Mesh:
    """Surface of revolution about z of a profile (r_i, z_i), smooth-shaded; closes the ends with caps
    where the radius is non-zero. Profiles that go up the outside and back down the inside give
    hollow solids (bowls)."""
    r = np.asarray(radii, float)
    z = np.asarray(heights, float)
    k = len(r)
    ang = np.linspace(0, TAU, segments, endpoint=False)
    ca, sa = np.cos(ang), np.sin(ang)
    v = np.stack([np.outer(r, ca), np.outer(r, sa), np.repeat(z[:, None], segments, 1)], -1).reshape(-1, 3)
    # profile normals: perpendicular to the profile tangent, pointing away from the axis for rising profiles
    dr = np.gradient(r)
    dz = np.gradient(z)
    nr, nz = dz, -dr
    ln = np.hypot(nr, nz) + 1e-12
    nr, nz = nr / ln, nz / ln
    n = np.stack([np.outer(nr, ca), np.outer(nr, sa), np.repeat(nz[:, None], segments, 1)], -1).reshape(-1, 3)
    faces = []
    for i in range(k - 1):
        for j in range(segments):
            a, b = i * segments + j, i * segments + (j + 1) % segments
            c, d = a + segments, b + segments
            faces += [(a, b, d), (a, d, c)]
    mesh = Mesh(v, n, np.asarray(faces, int), slot)
    parts = [mesh]
    for end, sign in ((0, -1.0), (k - 1, 1.0)):
        if r[end] > 1e-6:
            ring = np.stack([r[end] * ca, r[end] * sa, np.full(segments, z[end])], 1)
            parts.append(Mesh(*_flat([ring if sign > 0 else ring[::-1]]), slot))
    return merge(parts, slot)


def cylinder(radius: float = 0.5, height: float = 1.0, radius_top: float | None = None, segments: int = 16, slot=0):
    rt = radius if radius_top is None else radius_top
    ang = np.linspace(0, TAU, segments, endpoint=False)
    h = height / 2
    bottom = np.stack([radius * np.cos(ang), radius * np.sin(ang), np.full(segments, -h)], 1)
    top = np.stack([rt * np.cos(ang), rt * np.sin(ang), np.full(segments, h)], 1)
    # smooth sides
    slope = (radius - rt) / height
    side_n = np.stack([np.cos(ang), np.sin(ang), np.full(segments, slope)], 1)
    side_n /= np.linalg.norm(side_n, axis=1, keepdims=True)
    v = np.concatenate([bottom, top])
    n = np.concatenate([side_n, side_n])
    faces = []
    for j in range(segments):
        a, b = j, (j + 1) % segments
        faces += [(a, b, b + segments), (a, b + segments, a + segments)]
    parts = [Mesh(v, n, np.asarray(faces, int), slot)]
    if radius > 1e-6:
        parts.append(Mesh(*_flat([bottom[::-1]]), slot))
    if rt > 1e-6:
        parts.append(Mesh(*_flat([top]), slot))
    return merge(parts, slot)


def sphere(radius: float = 0.5, rings: int = 8, segments: int = 14, slot: int = 0, top: float = 1.0) -> Mesh:
    """Sphere as a lathe of a half circle; top < 1 keeps only the upper part (top=0.5: a dome)."""
    phi = np.linspace(np.pi * top, 0.0, rings + 1)  # polar angle, from the lowest ring up to the pole
    return lathe(radius * np.sin(phi), radius * np.cos(phi), segments, slot)


def torus(major: float = 0.5, minor: float = 0.12, arc: float = TAU, n_major: int = 14, n_minor: int = 8, slot=0):
    """Torus in the x-z plane (axis y); `arc` < 2*pi gives an open handle."""
    closed = arc >= TAU - 1e-6
    u = np.linspace(0, arc, n_major, endpoint=not closed)
    w = np.linspace(0, TAU, n_minor, endpoint=False)
    uu, ww = np.meshgrid(u, w, indexing="ij")
    cx, cz = np.cos(uu), np.sin(uu)
    v = np.stack([(major + minor * np.cos(ww)) * cx, minor * np.sin(ww), (major + minor * np.cos(ww)) * cz], -1)
    n = np.stack([np.cos(ww) * cx, np.sin(ww), np.cos(ww) * cz], -1)
    v, n = v.reshape(-1, 3), n.reshape(-1, 3)
    faces = []
    rows = n_major if closed else n_major - 1
    for i in range(rows):
        for j in range(n_minor):
            a = i * n_minor + j
            b = i * n_minor + (j + 1) % n_minor
            c = ((i + 1) % n_major) * n_minor + j
            d = ((i + 1) % n_major) * n_minor + (j + 1) % n_minor
            faces += [(a, c, d), (a, d, b)]
    return Mesh(v, n, np.asarray(faces, int), slot)


def merge(meshes: list[Mesh], slot: int | None = None) -> Mesh:
    vs, ns, fs, base = [], [], [], 0
    for m in meshes:
        vs.append(m.vertices)
        ns.append(m.normals)
        fs.append(m.faces + base)
        base += len(m.vertices)
    return Mesh(np.concatenate(vs), np.concatenate(ns), np.concatenate(fs), meshes[0].slot if slot is None else slot)


def put(mesh: Mesh, offset=(0, 0, 0), euler=(0, 0, 0), slot: int | None = None) -> Mesh:
    m = mesh.transformed(offset=offset, euler=euler)
    if slot is not None:
        m.slot = slot
    return m


# --------------------------------------------------------------------------- class grammars
# Each takes a numpy Generator and returns a list of meshes in arbitrary units, z up.


def mug(g):
    r, h = g.uniform(0.3, 0.5), g.uniform(0.6, 1.1)
    rt, wall = r * g.uniform(0.85, 1.15), 0.04
    # open at the top (outer wall up, rim, inner wall down to the bottom): upside down it looks different
    radii = [0.0, r, rt, rt - wall, rt - wall, 0.0]
    heights = np.array([0.0, 0.0, h, h, 0.12 * h, 0.12 * h]) - h / 2
    parts = [lathe(radii, heights, 20, slot=0)]
    parts.append(put(cylinder(rt - wall, 0.01, slot=2, segments=20), (0, 0, h * 0.3)))  # the drink inside
    hr = h * g.uniform(0.25, 0.4)
    parts.append(put(torus(hr, g.uniform(0.04, 0.08), arc=np.pi, slot=g.integers(0, 2)), (r, 0, 0), (0, np.pi / 2, 0)))
    if g.random() < 0.4:  # saucer
        parts.append(put(cylinder(r * 1.8, 0.05, slot=1), (0, 0, -h / 2 - 0.03)))
    return parts


def table(g):
    w, d, h = g.uniform(0.9, 1.6), g.uniform(0.6, 1.1), g.uniform(0.6, 1.0)
    t = g.uniform(0.04, 0.1)
    round_top = g.random() < 0.3
    top = cylinder(w / 2, t, segments=20) if round_top else box(w, d, t)
    parts = [put(top, (0, 0, h / 2))]
    leg = g.uniform(0.04, 0.09)
    ix, iy = (w / 2 - leg * 1.5) * (0.7 if round_top else 1), (d / 2 - leg * 1.5) * (0.7 if round_top else 1)
    square_legs = g.random() < 0.5
    for sx in (-1, 1):
        for sy in (-1, 1):
            lg = box(leg, leg, h, slot=1) if square_legs else cylinder(leg / 2, h, slot=1, segments=8)
            parts.append(put(lg, (sx * ix, sy * iy, 0)))
    if g.random() < 0.4:
        parts.append(put(box(2 * ix, leg * 0.6, leg * 0.6, slot=1), (0, 0, -h / 4)))
    # a drawer under the top on the +x side breaks the table's 2- (or 4-) fold symmetry
    dw = g.uniform(0.25, 0.4) * d
    parts.append(put(box(0.16, dw * 2, 0.12, slot=2), (ix - 0.02, 0, h / 2 - t / 2 - 0.06)))
    return parts


def chair(g):
    s, h = g.uniform(0.45, 0.65), g.uniform(0.4, 0.6)
    back = g.uniform(0.4, 0.8)
    leg = g.uniform(0.035, 0.06)
    parts = [put(box(s, s, 0.07), (0, 0, 0))]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(put(box(leg, leg, h, slot=1), (sx * (s / 2 - leg), sy * (s / 2 - leg), -h / 2)))
    tilt = g.uniform(-0.25, 0.0)
    parts.append(put(box(0.06, s, back, slot=g.integers(0, 2)), (-s / 2, 0, back / 2), (0, tilt, 0)))
    if g.random() < 0.4:  # armrests
        for sy in (-1, 1):
            parts.append(put(box(s * 0.9, 0.05, 0.05, slot=1), (0, sy * s / 2, 0.25)))
    return parts


def lamp(g):
    base_r, pole_h = g.uniform(0.2, 0.35), g.uniform(0.7, 1.3)
    parts = [cylinder(base_r, 0.06, slot=1)]
    parts.append(put(cylinder(0.025, pole_h, slot=1, segments=8), (0, 0, pole_h / 2)))
    shade_h = g.uniform(0.25, 0.45)
    # an arm reaching towards +x holds the shade (a straight lamp would be a body of revolution)
    arm = g.uniform(0.25, 0.5)
    parts.append(put(cylinder(0.02, arm, slot=1, segments=8), (arm / 2, 0, pole_h), (0, np.pi / 2, 0)))
    tip = (arm, 0.0, pole_h - shade_h / 2)
    parts.append(put(cylinder(g.uniform(0.2, 0.35), shade_h, g.uniform(0.06, 0.15), slot=0), tip))
    parts.append(put(box(0.08, 0.06, 0.05, slot=2), (-base_r * 0.6, 0, 0.05)))  # a switch on the base
    return parts


def bottle(g):
    r, h = g.uniform(0.18, 0.3), g.uniform(0.6, 1.0)
    neck_r, neck_h = r * g.uniform(0.3, 0.45), g.uniform(0.15, 0.35)
    parts = [cylinder(r, h, slot=0)]
    parts.append(put(cylinder(r, 0.15, neck_r, slot=0), (0, 0, h / 2 + 0.075)))
    parts.append(put(cylinder(neck_r, neck_h, slot=0), (0, 0, h / 2 + 0.15 + neck_h / 2)))
    parts.append(put(cylinder(neck_r * 1.15, 0.06, slot=1), (0, 0, h / 2 + 0.15 + neck_h)))
    # a label patch on the +x side: without it a bottle is a body of revolution and its turn about
    # its axis cannot be seen
    lh = h * g.uniform(0.3, 0.5)
    parts.append(put(box(0.05, r * 1.2, lh, slot=2), (r, 0, g.uniform(-0.1, 0.1))))
    return parts


def vase(g):
    k = 9
    z = np.linspace(0, g.uniform(0.9, 1.4), k)
    bulge = g.uniform(0.25, 0.45)
    neck = g.uniform(0.08, 0.2)
    pos = g.uniform(0.3, 0.6)
    r = neck + (bulge - neck) * np.exp(-(((np.linspace(0, 1, k) - pos) / 0.28) ** 2))
    r[0] = max(r[0], 0.12)
    parts = [lathe(r, z, 18, slot=0)]
    # one handle on the -x side and a spout lip on +x: a jug-like vase whose turn about its axis shows
    parts.append(put(torus(0.12, 0.025, np.pi, slot=1), (-r[-3], 0, z[-3]), (0, -np.pi / 2, 0)))
    parts.append(put(box(0.12, 0.08, 0.04, slot=1), (r[-1] + 0.05, 0, z[-1] - 0.02)))
    return parts


def bowl(g):
    rad, depth, wall = g.uniform(0.4, 0.6), g.uniform(0.2, 0.4), 0.04
    t = np.linspace(0, np.pi / 2, 6)
    outer_r, outer_z = rad * np.sin(t) + 0.05, depth * (1 - np.cos(t))
    inner_r, inner_z = (rad - wall) * np.sin(t[::-1]), depth * (1 - np.cos(t[::-1])) + wall
    r = np.concatenate([[0.0], outer_r, [rad + 0.05], inner_r])
    z = np.concatenate([[0.0], outer_z, [depth + 0.01], inner_z])
    parts = [lathe(r, z, 20, slot=0)]
    # a spout on +x and a small tab on -y make every turn visible
    parts.append(put(box(0.18, 0.06, 0.05, slot=1), (rad + 0.12, 0, depth * 0.8)))
    parts.append(put(box(0.05, 0.1, 0.04, slot=2), (0, -rad - 0.08, depth * 0.9)))
    return parts


def airplane(g):
    length, r = g.uniform(1.2, 1.8), g.uniform(0.07, 0.12)
    span, chord = g.uniform(1.0, 1.6), g.uniform(0.2, 0.35)
    parts = [put(cylinder(r, length, segments=12), (0, 0, 0), (0, np.pi / 2, 0))]
    parts.append(put(cylinder(r, 0.25, 0.01, segments=12), (length / 2 + 0.125, 0, 0), (0, np.pi / 2, 0)))
    sweep = g.uniform(-0.3, 0.3)
    parts.append(put(box(chord, span, 0.03, slot=1), (g.uniform(-0.15, 0.1), 0, 0), (0, 0, sweep * 0.3)))
    parts.append(put(box(0.18, span * 0.35, 0.025, slot=1), (-length / 2 + 0.1, 0, 0)))
    parts.append(put(box(0.2, 0.025, g.uniform(0.18, 0.3), slot=2), (-length / 2 + 0.1, 0, 0.15)))
    if g.random() < 0.5:  # engines
        for sy in (-1, 1):
            parts.append(put(cylinder(0.05, 0.22, segments=8, slot=2), (0, sy * span * 0.25, -0.06), (0, np.pi / 2, 0)))
    return parts


def car(g):
    ln, w, h = g.uniform(1.0, 1.5), g.uniform(0.5, 0.7), g.uniform(0.2, 0.3)
    parts = [put(box(ln, w, h), (0, 0, 0))]
    cab = ln * g.uniform(0.35, 0.6)
    # the cab sits towards the rear (-x), so front and back differ
    parts.append(put(box(cab, w * 0.9, h * g.uniform(0.7, 1.1), slot=1), (-ln * g.uniform(0.08, 0.2), 0, h * 0.9)))
    wr = g.uniform(0.1, 0.15)
    for sx in (-1, 1):
        for sy in (-1, 1):
            wheel = cylinder(wr, 0.08, segments=12, slot=2)
            parts.append(put(wheel, (sx * ln * 0.32, sy * w / 2, -h / 2), (np.pi / 2, 0, 0)))
    if g.random() < 0.3:  # spoiler
        parts.append(put(box(0.08, w, 0.03, slot=2), (-ln / 2, 0, h * 0.8)))
    return parts


def rocket(g):
    r, h = g.uniform(0.1, 0.18), g.uniform(0.9, 1.4)
    parts = [cylinder(r, h, slot=0)]
    parts.append(put(cylinder(r, g.uniform(0.2, 0.4), 0.0, slot=1), (0, 0, h / 2 + 0.15)))
    n_fins = int(g.integers(3, 5))
    fin = np.array([[0, 0], [g.uniform(0.15, 0.3), -0.05], [g.uniform(0.15, 0.3), -0.2], [0, 0.25]])
    for i in range(n_fins):
        a = TAU * i / n_fins
        parts.append(put(extrude(fin, 0.02, slot=2), (r * np.cos(a), r * np.sin(a), -h / 2 + 0.12), (0, 0, a)))
    # a hatch on the +x side and a side booster on -y break the fins' 3- or 4-fold symmetry
    parts.append(put(box(0.06, r * 0.9, h * 0.2, slot=2), (r, 0, h * 0.15)))
    parts.append(put(cylinder(r * 0.35, h * 0.5, slot=1, segments=8), (0, -r * 1.3, -h * 0.15)))
    return parts


def laptop(g):
    w, d = g.uniform(0.8, 1.2), g.uniform(0.55, 0.8)
    t = g.uniform(0.03, 0.06)
    parts = [put(box(d, w, t, slot=0), (0, 0, 0))]  # base, its hinge along y at -x
    parts.append(put(box(d * 0.45, w * 0.85, 0.01, slot=1), (d * 0.12, 0, t / 2 + 0.005)))  # keyboard
    parts.append(put(box(d * 0.25, w * 0.3, 0.01, slot=2), (d * 0.38, 0, t / 2 + 0.005)))  # touchpad, at the front
    open_angle = g.uniform(0.15, 0.6)  # screen tilted back from vertical
    screen = put(box(0.03, w, d * g.uniform(0.8, 1.0), slot=0), (0, 0, d * 0.45), (0, -open_angle, 0))
    parts.append(put(screen, (-d / 2, 0, t / 2)))
    return parts


def house(g):
    w, d, h = g.uniform(0.8, 1.2), g.uniform(0.6, 1.0), g.uniform(0.5, 0.8)
    parts = [put(box(w, d, h), (0, 0, h / 2))]
    rh = g.uniform(0.25, 0.5)
    roof = extrude(np.array([[-w / 2 - 0.05, 0], [w / 2 + 0.05, 0], [0, rh]]), d + 0.1, slot=1)
    parts.append(put(roof, (0, 0, h), (0, 0, 0)))
    parts.append(put(box(0.12, 0.12, rh, slot=2), (w * 0.25, d * 0.2, h + rh * 0.6)))  # chimney
    parts.append(put(box(0.02, 0.18, 0.3, slot=2), (w / 2, 0, 0.15)))  # door
    return parts


def mushroom(g):
    sh, sr = g.uniform(0.3, 0.6), g.uniform(0.06, 0.12)
    tilt = g.uniform(0.15, 0.4)  # the cap always leans towards -x
    parts = [put(cylinder(sr, sh, sr * 1.2, slot=1), (0, 0, sh / 2))]
    cap = sphere(g.uniform(0.25, 0.45), slot=0, top=0.5)
    parts.append(put(cap, (-np.sin(tilt) * 0.05, 0, sh), (0, -tilt, 0)))
    # a second, smaller mushroom at +x (and often a third at -y) fix the cluster's pose
    parts.append(put(cylinder(sr * 0.6, sh * 0.5, slot=1), (0.25, 0.0, sh * 0.25)))
    parts.append(put(sphere(0.15, slot=2, top=0.5), (0.25, 0.0, sh * 0.5)))
    if g.random() < 0.6:
        parts.append(put(cylinder(sr * 0.4, sh * 0.3, slot=1), (0.0, -0.22, sh * 0.15)))
        parts.append(put(sphere(0.09, slot=2, top=0.5), (0.0, -0.22, sh * 0.3)))
    return parts


def pistol(g):
    ln, hb = g.uniform(0.6, 0.9), g.uniform(0.1, 0.16)
    parts = [put(box(ln, 0.07, hb, slot=0), (0, 0, 0))]  # slide and frame, muzzle towards +x
    parts.append(put(cylinder(0.03, 0.08, slot=1, segments=8), (ln / 2 + 0.03, 0, hb * 0.2), (0, np.pi / 2, 0)))
    grip_h, rake = g.uniform(0.3, 0.45), g.uniform(0.2, 0.4)
    grip = box(0.13, 0.08, grip_h, slot=1)
    parts.append(put(grip, (-ln / 2 + 0.1 + np.sin(rake) * grip_h / 2, 0, -hb / 2 - grip_h / 2 + 0.02), (0, -rake, 0)))
    parts.append(put(torus(0.06, 0.012, np.pi, slot=2), (-ln / 2 + 0.28, 0, -hb / 2), (np.pi, 0, 0)))  # trigger guard
    if g.random() < 0.5:  # a sight on top
        parts.append(put(box(0.05, 0.03, 0.04, slot=2), (ln / 2 - 0.06, 0, hb / 2 + 0.02)))
    return parts


def hammer(g):
    hl = g.uniform(0.7, 1.1)
    parts = [put(cylinder(0.035, hl, slot=1, segments=8), (0, 0, 0))]
    head_w = g.uniform(0.3, 0.45)
    parts.append(put(box(head_w, g.uniform(0.08, 0.12), g.uniform(0.08, 0.12), slot=0), (0, 0, hl / 2)))
    # a round striking face on +x and a claw on -x: the head's two ends differ
    parts.append(put(cylinder(0.07, 0.08, slot=0, segments=10), (head_w / 2 + 0.04, 0, hl / 2), (0, np.pi / 2, 0)))
    parts.append(put(box(0.15, 0.05, 0.05, slot=0), (-head_w / 2 - 0.05, 0, hl / 2 - 0.03), (0, -0.5, 0)))
    parts.append(put(cylinder(0.045, 0.2, slot=2, segments=8), (0, 0, -hl / 2 + 0.1)))  # grip
    return parts


def bed(g):
    ln, w, h = g.uniform(1.2, 1.6), g.uniform(0.7, 1.1), g.uniform(0.15, 0.25)
    parts = [put(box(ln, w, h, slot=1), (0, 0, 0))]
    parts.append(put(box(ln * 0.95, w * 0.95, 0.12, slot=0), (0, 0, h / 2 + 0.06)))
    parts.append(put(box(0.06, w, g.uniform(0.35, 0.6), slot=1), (-ln / 2, 0, 0.2)))
    if g.random() < 0.5:
        parts.append(put(box(0.06, w, 0.25, slot=1), (ln / 2, 0, 0.08)))
    if g.random() < 0.6:  # pillow
        parts.append(put(box(0.2, w * 0.6, 0.08, slot=2), (-ln / 2 + 0.18, 0, h / 2 + 0.16)))
    return parts


def bookshelf(g):
    w, d, h = g.uniform(0.6, 1.0), g.uniform(0.25, 0.4), g.uniform(0.9, 1.5)
    t = 0.04
    parts = [put(box(t, d, h, slot=0), (sx * w / 2, 0, 0)) for sx in (-1, 1)]
    parts.append(put(box(w, 0.02, h, slot=0), (0, d / 2, 0)))
    n = int(g.integers(2, 6))
    for i in range(n + 1):
        parts.append(put(box(w, d, t, slot=0), (0, 0, -h / 2 + i * h / n)))
    parts.append(put(box(w + 0.04, d + 0.02, 0.12, slot=1), (0, 0, -h / 2 - 0.06)))  # plinth: top and bottom differ
    for i in range(n):  # some books
        if g.random() < 0.6:
            bw = g.uniform(0.2, w * 0.8)
            parts.append(
                put(box(bw, d * 0.8, h / n * 0.7, slot=1 + int(g.integers(0, 2))), (0, 0, -h / 2 + (i + 0.4) * h / n))
            )
    return parts


def guitar(g):
    lower, upper = g.uniform(0.22, 0.3), g.uniform(0.16, 0.22)
    parts = [put(sphere(lower, slot=0), (0, 0, 0)).transformed(scale=(1, 0.35, 1))]
    parts.append(put(sphere(upper, slot=0), (0, 0, lower + upper * 0.6)).transformed(scale=(1, 0.35, 1)))
    neck = g.uniform(0.5, 0.7)
    top = lower + upper * 1.4
    parts.append(put(box(0.06, 0.04, neck, slot=1), (0, 0, top + neck / 2)))
    parts.append(put(box(0.1, 0.04, 0.14, slot=2), (0, 0, top + neck + 0.07), (0, g.uniform(0.1, 0.3), 0)))
    # sound hole and bridge on the front (-y) face: front and back differ
    hole = cylinder(upper * 0.45, 0.02, slot=2, segments=12)
    parts.append(put(hole, (0, -lower * 0.36, lower * 0.55), (np.pi / 2, 0, 0)))
    parts.append(put(box(0.16, 0.04, 0.04, slot=1), (0, -lower * 0.36, -lower * 0.35)))
    return parts


def boat(g):
    ln, w, h = g.uniform(1.0, 1.5), g.uniform(0.3, 0.5), g.uniform(0.15, 0.25)
    hull = extrude(np.array([[-ln / 2, h], [-ln / 2 + 0.1, 0], [ln / 2 - 0.25, 0], [ln / 2, h]]), w, slot=0)
    parts = [hull]
    if g.random() < 0.6:
        parts.append(put(box(ln * 0.3, w * 0.7, g.uniform(0.12, 0.25), slot=1), (-ln * 0.1, 0, h + 0.08)))
    if g.random() < 0.6:  # mast and sail
        mh = g.uniform(0.5, 0.9)
        parts.append(put(cylinder(0.02, mh, slot=1, segments=6), (0.1, 0, h + mh / 2)))
        sail = extrude(np.array([[0, 0], [mh * 0.5, 0], [0, mh * 0.9]]), 0.01, slot=2)
        parts.append(put(sail, (0.12, 0, h + 0.05), (0, 0, 0)))
    return parts


def snowman(g):
    n = int(g.integers(2, 4))
    r = g.uniform(0.28, 0.38)
    z = 0.0
    parts = []
    radii, centres = [], []
    for _ in range(n):
        parts.append(put(sphere(r, slot=0), (0, 0, z + r)))
        radii.append(r)
        centres.append(z + r)
        z += r * 1.7
        r *= g.uniform(0.65, 0.8)
    head_r, head_z = radii[-1], centres[-1]
    # a long carrot nose towards +x and stick arms to -y and +y (at different heights) fix the pose
    nose = g.uniform(0.15, 0.25)
    parts.append(
        put(cylinder(0.04, nose, 0.0, slot=2, segments=8), (head_r + nose / 2 - 0.02, 0, head_z), (0, np.pi / 2, 0))
    )
    body_r, body_z = radii[-2], centres[-2]
    for side, lift in ((-1, 0.05), (1, 0.18)):
        parts.append(
            put(
                cylinder(0.02, 0.35, slot=1, segments=6),
                (0, side * (body_r + 0.12), body_z + lift),
                (side * -1.2, 0, 0),
            )
        )
    if g.random() < 0.6:  # hat
        parts.append(put(cylinder(r * 0.7, r * 0.8, slot=1), (0, 0, z + r * 0.2)))
        parts.append(put(cylinder(r * 1.0, 0.03, slot=1), (0, 0, z - r * 0.2)))
    return parts


def umbrella(g):
    pole = g.uniform(0.8, 1.2)
    parts = [put(cylinder(0.02, pole, slot=1, segments=8), (0, 0, pole / 2))]
    r, h = g.uniform(0.4, 0.6), g.uniform(0.12, 0.3)
    tilt = g.uniform(0.1, 0.5)  # the canopy always leans the same way
    parts.append(put(cylinder(r, h, 0.02, segments=int(g.integers(6, 12)), slot=0), (0, 0, pole), (tilt * 0.3, 0, 0)))
    parts.append(put(torus(0.08, 0.02, np.pi, slot=1), (0.08, 0, 0), (0, 0, 0)))  # J handle, hooked towards +x
    parts.append(put(box(0.1, 0.04, 0.05, slot=2), (0, -0.05, pole * 0.35)))  # the runner's catch, on -y
    return parts


def teapot(g):
    r = g.uniform(0.3, 0.4)
    parts = [sphere(r, slot=0).transformed(scale=(1, 1, g.uniform(0.7, 1.0)))]
    spout = cylinder(0.05, g.uniform(0.3, 0.45), 0.03, slot=0, segments=8)
    parts.append(put(spout, (r + 0.1, 0, 0.05), (0, 0.8, 0)))
    parts.append(put(torus(0.15, 0.03, np.pi, slot=1), (-r, 0, 0.02), (0, -np.pi / 2, 0)))
    parts.append(put(sphere(0.06, slot=1), (0, 0, r * 0.9)))
    return parts


def cactus(g):
    h = g.uniform(0.8, 1.3)
    parts = [put(cylinder(0.12, h, slot=0, segments=10), (0, 0, h / 2))]
    parts.append(put(sphere(0.12, slot=0, top=0.5), (0, 0, h)))
    # a long arm high on +x, a short one low on -x (or none): the two sides differ
    for side, (lo, hi), short in ((1, (0.5, 0.7), 1.0), (-1, (0.25, 0.4), 0.5)):
        if side < 0 and g.random() < 0.3:
            continue
        z0, ln = g.uniform(lo, hi) * h, g.uniform(0.2, 0.4) * short
        parts.append(put(cylinder(0.07, 0.22, slot=0, segments=8), (side * 0.2, 0, z0), (0, np.pi / 2, 0)))
        parts.append(put(cylinder(0.07, ln, slot=0, segments=8), (side * 0.3, 0, z0 + ln / 2)))
    parts.append(put(cylinder(0.2, 0.25, 0.25, slot=1), (0, 0, -0.05)))  # pot
    return parts


CLASSES: dict[str, Callable[[np.random.Generator], list[Mesh]]] = {
    f.__name__: f
    for f in (
        airplane,
        bed,
        bookshelf,
        bottle,
        bowl,
        boat,
        cactus,
        car,
        chair,
        guitar,
        hammer,
        house,
        lamp,
        laptop,
        mug,
        mushroom,
        pistol,
        rocket,
        snowman,
        table,
        teapot,
        umbrella,
        vase,
    )
}


def normalise(meshes: list[Mesh]) -> list[Mesh]:
    """Centre the bounding box at the origin and scale its diagonal to 1 (ShapeNet's convention)."""
    allv = np.concatenate([m.vertices for m in meshes])
    lo, hi = allv.min(0), allv.max(0)
    centre, diag = (lo + hi) / 2, np.linalg.norm(hi - lo)
    out = []
    for m in meshes:
        out.append(Mesh((m.vertices - centre) / diag, m.normals, m.faces, m.slot))
    return out


def make_object(class_name: str, g: np.random.Generator) -> list[Mesh]:
    """One normalised instance of a class, merged into one mesh per colour slot."""
    parts = normalise(CLASSES[class_name](g))
    slots: dict[int, list[Mesh]] = {}
    for m in parts:
        slots.setdefault(int(m.slot), []).append(m)
    return [merge(ms, slot) for slot, ms in sorted(slots.items())]
