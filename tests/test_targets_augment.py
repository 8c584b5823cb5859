import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from rayeq.config import AugmentConfig, load_config
from rayeq.data.augment import IDENTITY, PARAM_NAMES, apply_params, sample_params
from rayeq.data.render import _import_pybullet
from rayeq.data.targets import relative_color, relative_rotation_quaternion

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
    # the renderer's pybullet quaternion is the same extrinsic xyz rotation as scipy's
    p = _import_pybullet()
    for a in e1[:5]:
        np.testing.assert_allclose(
            p.getQuaternionFromEuler(a.tolist()), Rotation.from_euler("xyz", a).as_quat(), atol=1e-6
        )
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
    assert cs.shape == (2, 4)
    # -0.8 turns and +0.2 turns are the same hue change on the circle; 1.0 turn is no change
    np.testing.assert_allclose(cs[0, :2], [np.cos(2 * np.pi * 0.2), np.sin(2 * np.pi * 0.2)], atol=1e-6)
    np.testing.assert_allclose(cs[1, 2:], [1.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="cos_sin"):
        relative_color(l1, l2, "wrapped")


def _image(seed=0, h=48, w=40):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(3, 6, 5, generator=g)
    return (torch.nn.functional.interpolate(coarse[None], size=(h, w), mode="bilinear")[0] * 255).to(torch.uint8)


def test_recorded_parameters_reproduce_the_view():
    cfg = load_config(None, ["augment.rotation.enabled=true", "augment.translation.enabled=true",
                             "augment.grayscale.strength=2", "augment.grayscale.enabled=true"]).augment  # fmt: skip
    img = _image()
    g = np.random.default_rng(0)
    for _ in range(20):
        p = sample_params(g, cfg, (48, 40), 32)
        view = apply_params(img, p, 32)
        assert view.shape == (3, 32, 32) and view.dtype == torch.uint8
        torch.testing.assert_close(apply_params(img, p.copy(), 32), view, rtol=0, atol=0)
    assert len(p) == len(PARAM_NAMES)


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
