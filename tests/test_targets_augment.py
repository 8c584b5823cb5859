import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from rayeq.config import AugmentConfig, load_config
from rayeq.data.feed.augment import IDENTITY, PARAM_NAMES, apply_params, sample_params
from rayeq.data.feed.targets import relative_color, relative_rotation_quaternion
from rayeq.data.make.raster import rotation_matrices

S2 = np.sqrt(0.5)


@pytest.mark.parametrize(
    "e1, e2, expected",
    [
        ((0, 0, 0), (0, 0, np.pi / 2), (0, 0, S2, S2)),  # 90 deg about z
        ((0, 0, 0), (np.pi / 2, 0, 0), (S2, 0, 0, S2)),  # 90 deg about x
        ((0, 0, np.pi / 2), (0, 0, np.pi / 2), (0, 0, 0, 1)),  # same pose: identity
        ((0, 0, np.pi / 2), (0, 0, 0), (0, 0, -S2, S2)),  # back: inverse
        ((0, np.pi / 4, 0), (0, -np.pi / 4, 0), (0, -S2, 0, S2)),  # -90 deg about y
    ],
)
def test_relative_quaternion_on_known_rotations(e1, e2, expected):
    q = relative_rotation_quaternion(np.array([e1]), np.array([e2]))[0]
    # SIE does not canonicalise the sign, so compare up to q ~ -q only through the rotation itself
    assert np.allclose(q, expected, atol=1e-6) or np.allclose(q, -np.array(expected), atol=1e-6)


def test_relative_quaternion_matches_scipy_and_pybullet_conventions():
    g = np.random.default_rng(0)
    e1, e2 = g.uniform(-np.pi / 2, np.pi / 2, (50, 3)), g.uniform(-np.pi / 2, np.pi / 2, (50, 3))
    q = relative_rotation_quaternion(e1, e2)
    ref = (Rotation.from_euler("xyz", e1).inv() * Rotation.from_euler("xyz", e2)).as_quat()
    np.testing.assert_allclose(q, ref, atol=1e-6)  # SIE: R1^-1 R2, scipy (x, y, z, w), sign as computed
    # the renderer turns the object by the same extrinsic xyz rotation as scipy's (and pybullet's: test_render.py)
    np.testing.assert_allclose(rotation_matrices(e1), Rotation.from_euler("xyz", e1).as_matrix(), atol=1e-12)
    # R1 * q = R2
    r2 = Rotation.from_euler("xyz", e1) * Rotation.from_quat(q)
    np.testing.assert_allclose(r2.as_matrix(), Rotation.from_euler("xyz", e2).as_matrix(), atol=1e-5)
    qc = relative_rotation_quaternion(e1, e2, canonical=True)
    assert (qc[:, 3] >= 0).all()
    assert (Rotation.from_quat(qc).inv() * Rotation.from_quat(q)).magnitude().max() < 1e-5
    assert (q[:, 3] < 0).any()  # SIE's convention really keeps both signs


def test_relative_color_sie_and_cos_sin():
    l1 = np.zeros((2, 7), np.float32)
    l2 = np.zeros((2, 7), np.float32)
    l1[:, 3], l2[:, 3] = [0.9, 0.2], [0.1, 0.45]  # floor hue
    l1[:, 6], l2[:, 6] = [0.5, 0.0], [0.75, 1.0]  # light hue
    np.testing.assert_allclose(relative_color(l1, l2, "sie"), [[-0.8, 0.25], [0.25, 1.0]], atol=1e-6)
    cs = relative_color(l1, l2, "cos_sin")
    assert cs.shape == (2, 4) and cs.dtype == relative_color(l1, l2).dtype == np.float32
    # -0.8 turns and +0.2 turns are the same hue change on the circle; 1.0 turn is no change
    np.testing.assert_allclose(cs[0, :2], [np.cos(2 * np.pi * 0.2), np.sin(2 * np.pi * 0.2)], atol=1e-6)
    np.testing.assert_allclose(cs[1, 2:], [1.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="cos_sin"):
        relative_color(l1, l2, "wrapped")


def _image(seed=0, h=48, w=40):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(3, 6, 5, generator=g)
    return (torch.nn.functional.interpolate(coarse[None], size=(h, w), mode="bilinear")[0] * 255).to(torch.uint8)


def _reference_view(img, p, size):
    """The documented chain written out again with torchvision.transforms.v2's functional ops, from the
    parameter names (not their indices): crop -> flip -> rotation + translation -> brightness, contrast,
    saturation, hue -> grayscale -> blur."""
    import torchvision.transforms.v2.functional as F

    v = dict(zip(PARAM_NAMES, p.tolist(), strict=True))
    _, h, w = img.shape
    out = F.resized_crop(img, round(v["crop_top"] * h), round(v["crop_left"] * w), round(v["crop_height"] * h),
                         round(v["crop_width"] * w), [size, size], antialias=True)  # fmt: skip
    if v["flip"]:
        out = F.hflip(out)
    out = F.affine(out, angle=v["angle"], translate=[v["translate_x"], v["translate_y"]], scale=1.0, shear=[0.0],
                   interpolation=F.InterpolationMode.BILINEAR)  # fmt: skip
    out = F.adjust_brightness(out, v["brightness"])
    out = F.adjust_contrast(out, v["contrast"])
    out = F.adjust_saturation(out, v["saturation"])
    out = F.adjust_hue(out, v["hue"])
    if v["grayscale"]:
        out = F.rgb_to_grayscale(out, num_output_channels=3)
    if v["blur_sigma"]:
        s = v["blur_sigma"]
        k = min(2 * int(np.ceil(3 * s)) + 1, size - (1 - size % 2))
        out = F.gaussian_blur(out, [k, k], [s, s])
    return out


def test_recorded_parameters_reproduce_the_view():
    """A view is the documented chain applied with its recorded parameters (checked against the chain written
    out independently), and every recorded parameter that differs from the identity changes the view."""
    cfg = load_config(None, ["augment.rotation.enabled=true", "augment.translation.enabled=true",
                             "augment.grayscale.strength=2", "augment.grayscale.enabled=true"]).augment  # fmt: skip
    img = _image()
    g = np.random.default_rng(0)
    mattered = set()
    for _ in range(20):
        p = sample_params(g, cfg, (48, 40), 32)
        view = apply_params(img, p, 32)
        assert view.shape == (3, 32, 32) and view.dtype == torch.uint8
        torch.testing.assert_close(view, _reference_view(img, p, 32), rtol=0, atol=1)
        for k, name in enumerate(PARAM_NAMES):
            if p[k] == IDENTITY[k] or name in ("crop_top", "crop_left") or (name == "hue" and p[12] > 0.5):
                continue  # (a crop's position alone may not move it; hue is invisible after grayscale)
            undone = p.copy()
            undone[k] = IDENTITY[k]
            assert not torch.equal(apply_params(img, undone, 32), view), name
            mattered.add(name)
    assert len(p) == len(PARAM_NAMES)
    assert mattered >= {"crop_height", "crop_width", "flip", "angle", "translate_x", "translate_y", "brightness",
                        "contrast", "saturation", "hue", "grayscale", "blur_sigma"}  # fmt: skip


def test_parameters_respect_switches_and_strengths():
    img_hw, size = (64, 64), 64
    g = np.random.default_rng(1)
    families = ("crop", "flip", "color", "grayscale", "blur", "rotation", "translation")
    off = AugmentConfig.model_validate({k: {"enabled": False} for k in families})
    for _ in range(10):
        np.testing.assert_array_equal(sample_params(g, off, img_hw, size), IDENTITY)
    cfg = load_config(None, ["augment.rotation.enabled=true", "augment.rotation.strength=0.5",
                             "augment.translation.enabled=true", "augment.color.strength=0.5"]).augment  # fmt: skip
    ps = np.stack([sample_params(g, cfg, img_hw, size) for _ in range(400)])
    names = {n: i for i, n in enumerate(PARAM_NAMES)}
    assert np.abs(ps[:, names["angle"]]).max() <= 22.5 and np.abs(ps[:, names["angle"]]).max() > 15
    assert np.abs(ps[:, names["translate_x"]]).max() <= 10 / 224 * 64 + 1e-6
    jittered = ps[:, names["brightness"]] != 1
    assert 0.7 < jittered.mean() < 0.9  # colour jitter with probability 0.8
    assert np.abs(ps[jittered, names["brightness"]] - 1).max() <= 0.2 + 1e-6
    assert np.abs(ps[:, names["hue"]]).max() <= 0.05 + 1e-6
    blurred = ps[:, names["blur_sigma"]] > 0
    assert 0.4 < blurred.mean() < 0.6 and ps[blurred, names["blur_sigma"]].max() <= 2.0
    assert (ps[:, names["crop_height"]] <= 1).all() and (ps[:, names["crop_height"]] > 0).all()


def test_parameters_change_the_image_as_recorded():
    img = _image(1, 32, 32)
    p = IDENTITY.copy()
    torch.testing.assert_close(apply_params(img, p, 32), img, rtol=0, atol=0)
    flipped = p.copy()
    flipped[4] = 1
    torch.testing.assert_close(apply_params(img, flipped, 32), img.flip(-1), rtol=0, atol=0)
    bright = p.copy()
    bright[8] = 0.5
    assert apply_params(img, bright, 32).float().mean().item() == pytest.approx(
        img.float().mean().item() * 0.5, rel=0.02
    )
    gray = p.copy()
    gray[12] = 1
    out = apply_params(img, gray, 32)
    assert (out[0] == out[1]).all() and (out[1] == out[2]).all()


def _only(**values) -> np.ndarray:
    p = IDENTITY.copy()
    for name, v in values.items():
        p[PARAM_NAMES.index(name)] = v
    return p


def _centroid(channel: torch.Tensor) -> tuple[float, float]:
    w = channel.float()
    ys, xs = torch.meshgrid(torch.arange(w.shape[0]), torch.arange(w.shape[1]), indexing="ij")
    return float((w * ys).sum() / w.sum()), float((w * xs).sum() / w.sum())


def test_geometric_parameters_mean_what_they_say():
    """A bright dot at (row 16, col 26) of a 33-px image (centre (16, 16)): `angle` turns it about the centre,
    clockwise as displayed; `translate_x/_y` move it right/down by that many pixels; `blur_sigma` spreads it
    with variance sigma²; a crop box (top, left, height, width) in fractions picks that part of the source."""
    s = 33
    dot = torch.zeros(3, s, s, dtype=torch.uint8)
    dot[:, 15:18, 25:28] = 255
    assert _centroid(dot[0]) == pytest.approx((16, 26))
    for angle in (90, 30, -60):
        a = np.deg2rad(angle)  # clockwise on screen = (x, y) -> (x cos a - y sin a, x sin a + y cos a), y down
        want = (16 + 10 * np.sin(a), 16 + 10 * np.cos(a))
        assert _centroid(apply_params(dot, _only(angle=angle), s)[0]) == pytest.approx(want, abs=0.3), angle
    moved = apply_params(dot, _only(translate_x=-4, translate_y=3), s)[0]
    assert _centroid(moved) == pytest.approx((19, 22), abs=0.05)
    var0 = 2 / 3  # a 3-px box's variance along one axis
    for sigma in (0.8, 1.5):
        blurred = apply_params(dot, _only(blur_sigma=sigma), s)[0].float()
        cy, cx = _centroid(blurred)
        xs = torch.arange(s).float()
        var_x = float((blurred.sum(0) * (xs - cx) ** 2).sum() / blurred.sum())
        assert var_x - var0 == pytest.approx(sigma**2, rel=0.1), sigma
        assert (cy, cx) == pytest.approx((16, 26), abs=0.05)
    # crop: a horizontal ramp whose value is 4 x the column; the right half, bottom quarter of a 64-px source
    ramp = (torch.arange(64) * 4).to(torch.uint8).expand(3, 64, 64).clone()
    ramp[:, 48:] = ramp[:, 48:] // 2  # the bottom quarter is darker
    crop = apply_params(ramp, _only(crop_top=0.75, crop_left=0.5, crop_height=0.25, crop_width=0.5), 16).float()
    assert crop[0, :, 0].mean().item() == pytest.approx(4 * 32 / 2, abs=3)  # starts at column 32, darkened
    assert crop[0, :, -1].mean().item() == pytest.approx(4 * 63 / 2, abs=3)
    assert crop.std(1).max().item() < 1  # every row of the crop comes from the bottom quarter


def test_photometric_parameters_mean_what_they_say():
    """`contrast` scales the distance to the image's mean grey; `saturation` the distance of each pixel to its
    own grey; `hue` turns the colour wheel by that many turns (red + 1/3 turn = green); none of them move a
    grey image except contrast."""
    g = torch.Generator().manual_seed(0)
    img = (torch.rand(3, 16, 16, generator=g) * 120 + 60).to(torch.uint8)  # no clipping at 0.5x .. 1.5x
    gray = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    x = img.float()
    mean_gray = (x * gray).sum(0).mean()
    for c in (0.6, 1.4):
        out = apply_params(img, _only(contrast=c), 16).float()
        torch.testing.assert_close(out, (c * x + (1 - c) * mean_gray).round(), atol=1.0, rtol=0)
    for s in (0.5, 1.3):
        out = apply_params(img, _only(saturation=s), 16).float()
        own_gray = (x * gray).sum(0, keepdim=True)
        torch.testing.assert_close(out, (s * x + (1 - s) * own_gray).clamp(0, 255), atol=1.5, rtol=0)
    red = torch.zeros(3, 8, 8, dtype=torch.uint8)
    red[0] = 200
    green = apply_params(red, _only(hue=1 / 3), 8)
    assert (green[1] >= 198).all() and (green[0] <= 2).all() and (green[2] <= 2).all()
    blue = apply_params(red, _only(hue=-1 / 3), 8)
    assert (blue[2] >= 198).all() and (blue[0] <= 2).all() and (blue[1] <= 2).all()
    flat = torch.full((3, 8, 8), 90, dtype=torch.uint8)
    for name, v in (("saturation", 0.5), ("hue", 0.2)):
        torch.testing.assert_close(apply_params(flat, _only(**{name: v}), 8), flat, atol=1, rtol=0)


def _draw(overrides, n=3000, src=(64, 64), size=64, seed=2):
    cfg = load_config(None, overrides).augment
    g = np.random.default_rng(seed)
    ps = np.stack([sample_params(g, cfg, src, size) for _ in range(n)])
    return {name: ps[:, k] for k, name in enumerate(PARAM_NAMES)}


def spans(x, lo, hi):
    """x lies in [lo, hi] and comes within 1 % of both ends."""
    assert x.min() >= lo - 1e-6 and x.max() <= hi + 1e-6, (x.min(), x.max(), lo, hi)
    assert x.min() < lo + 0.01 * (hi - lo) and x.max() > hi - 0.01 * (hi - lo), (x.min(), x.max(), lo, hi)


def test_parameter_ranges_and_rates_follow_the_strengths():
    """At strength s: rotation uniform in +-45 s deg, translation in +-(10/224 size) s px, brightness/contrast/
    saturation 1 +- 0.4 s and hue +-0.1 s (with probability 0.8), blur sigma in [0.1, 0.1 + 1.9 s] (probability
    0.5), flip with probability 0.5 min(s, 1), grayscale 0.2 s; each range is filled to both ends."""
    for s in (0.5, 1.0, 2.0):
        p = _draw([f"augment.{f}.strength={s}" for f in ("rotation", "translation", "color", "blur", "flip",
                                                          "grayscale")]
                  + ["augment.rotation.enabled=true", "augment.translation.enabled=true",
                     "augment.grayscale.enabled=true"])  # fmt: skip

        spans(p["angle"], -45 * s, 45 * s)
        t = 10 / 224 * 64 * s
        spans(p["translate_x"], -t, t)
        spans(p["translate_y"], -t, t)
        jittered = p["brightness"] != 1
        assert abs(jittered.mean() - 0.8) < 0.03, s
        for name in ("brightness", "contrast", "saturation"):
            spans(p[name][jittered], 1 - 0.4 * s, 1 + 0.4 * s)
        spans(p["hue"][jittered], -0.1 * s, 0.1 * s)
        assert (p["hue"][~jittered] == 0).all()
        blurred = p["blur_sigma"] > 0
        assert abs(blurred.mean() - 0.5) < 0.03, s
        spans(p["blur_sigma"][blurred], 0.1, 0.1 + 1.9 * s)
        assert abs(p["flip"].mean() - 0.5 * min(s, 1)) < 0.03, s
        assert abs(p["grayscale"].mean() - 0.2 * s) < 0.03, s


def test_crop_boxes_follow_random_resized_crop():
    """torchvision RandomResizedCrop's sampling: area fraction in [max(0.08, 1 - 0.92 s), 1] and aspect ratio in
    [3/4, 4/3] (up to rounding to whole pixels), both ends reached, the box inside the image and anywhere in it;
    a full-width or full-height box is allowed; when no box fits in 10 tries, the whole image."""
    from rayeq.data.feed.augment import _crop_box

    for s, low in ((1.0, 0.08), (0.5, 0.54)):
        p = _draw([f"augment.crop.strength={s}"], n=4000, src=(200, 200), size=32)
        area = p["crop_height"] * p["crop_width"]
        ratio = p["crop_width"] / p["crop_height"]
        assert area.min() >= low - 0.01 and area.min() < low + 0.02 and area.max() > 0.97, (s, area.min())
        assert ratio.min() >= 0.72 and ratio.min() < 0.77 and ratio.max() <= 1.38 and ratio.max() > 1.3, s
        assert (p["crop_top"] + p["crop_height"] <= 1 + 1e-9).all() and (
            p["crop_left"] + p["crop_width"] <= 1 + 1e-9
        ).all()
        assert p["crop_top"].min() == 0 and (p["crop_top"] + p["crop_height"]).max() == pytest.approx(1)
        assert p["crop_left"].min() == 0 and (p["crop_left"] + p["crop_width"]).max() == pytest.approx(1)
    small = _draw([], n=2000, src=(3, 3), size=8)
    assert (small["crop_width"] == 1).any() and (small["crop_height"] == 1).any()
    assert np.isclose(small["crop_width"], 1 / 3).any() and np.isclose(small["crop_height"], 1 / 3).any()
    g = np.random.default_rng(0)
    assert _crop_box(g, 10, 10, (1.5, 2.0), (3 / 4, 4 / 3)) == (0.0, 0.0, 1.0, 1.0)  # no box of 150 % fits


def test_each_geometric_and_colour_step_runs_alone():
    """Every step is applied whenever its own parameter differs from the identity, whatever the others are."""
    g = torch.Generator().manual_seed(1)
    img = (torch.rand(3, 16, 16, generator=g) * 100 + 50).to(torch.uint8)
    for name, v in (("angle", 1.0), ("translate_x", 1.0), ("translate_y", 1.0), ("translate_x", -2.0),
                    ("translate_y", 3.0), ("brightness", 2.0), ("contrast", 2.0), ("saturation", 2.0),
                    ("hue", 0.3), ("blur_sigma", 0.5), ("flip", 1.0), ("grayscale", 1.0)):  # fmt: skip
        assert not torch.equal(apply_params(img, _only(**{name: v}), 16), img), (name, v)


def test_blur_uses_a_kernel_of_radius_ceil_3_sigma_at_most_the_image():
    """The blur is torchvision's Gaussian with kernel size 2 ceil(3 sigma) + 1, capped at the largest odd size
    that fits the image, exactly (no rounding tolerance), on a high-contrast image."""
    import torchvision.transforms.v2.functional as F

    g = torch.Generator().manual_seed(0)
    for size, sigma in ((32, 0.4), (32, 1.0), (33, 1.7), (8, 2.0), (9, 1.9)):
        img = (torch.rand(3, size, size, generator=g) > 0.5).to(torch.uint8) * 255
        k = min(2 * int(np.ceil(3 * sigma)) + 1, size if size % 2 else size - 1)
        want = F.gaussian_blur(img, [k, k], [sigma, sigma])
        torch.testing.assert_close(apply_params(img, _only(blur_sigma=sigma), size), want, rtol=0, atol=0)


def test_a_one_pixel_crop_keeps_that_row_or_column():
    g = torch.Generator().manual_seed(0)
    img = (torch.rand(3, 10, 10, generator=g) * 255).to(torch.uint8)
    row = apply_params(img, _only(crop_top=0.3, crop_height=0.1), 10)  # the 4th row only, stretched
    assert (row == row[:, :1, :]).all() and (row[:, 0, :].float() - img[:, 3, :].float()).abs().max() <= 1
    col = apply_params(img, _only(crop_left=0.5, crop_width=0.1), 10)
    assert (col == col[:, :, :1]).all() and (col[:, :, 0].float() - img[:, :, 5].float()).abs().max() <= 1


def test_rotation_matrix_matches_scipy_extrinsic_xyz():
    """rotation_matrix_xyz (torch, for the supervised pose head) is scipy's Rotation.from_euler("xyz") matrix,
    batched over any leading shape."""
    from rayeq.data.feed.targets import rotation_matrix_xyz

    g = np.random.default_rng(0)
    e = g.uniform(-np.pi, np.pi, (64, 3))
    want = Rotation.from_euler("xyz", e).as_matrix()
    got = rotation_matrix_xyz(torch.from_numpy(e))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
    batched = rotation_matrix_xyz(torch.from_numpy(e).view(8, 8, 3))
    assert batched.shape == (8, 8, 3, 3)
    np.testing.assert_allclose(batched.reshape(64, 3, 3).numpy(), want, atol=1e-12)


def test_resize_makes_any_image_square_at_the_size():
    from rayeq.data.feed.augment import resize

    img = _image(0, 48, 40)
    for h, w in ((48, 40), (32, 40), (40, 32)):
        out = resize(img[:, :h, :w], 32)
        assert out.shape == (3, 32, 32), (h, w)
    same = _image(0, 32, 32)
    assert resize(same, 32) is same
    import torchvision.transforms.v2.functional as F

    noisy = (torch.rand(3, 64, 48, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    torch.testing.assert_close(resize(noisy, 16), F.resize(noisy, [16, 16], antialias=True), rtol=0, atol=0)
    assert not torch.equal(resize(noisy, 16), F.resize(noisy, [16, 16], antialias=False))  # shrinking is antialiased
