import pytest
import torch

from rayeq.losses import resize_target
from rayeq.methods import SIE, JointEmbedding, MissingTargetError, XRecon, build_method

from conftest import smooth_pairs

METHODS = ["vicreg", "simclr", "sie", "xrecon"]
EXPECTED_TERMS = {
    "vicreg": {"sim", "std", "cov", "total"},
    "simclr": {"nt_xent", "total"},
    "sie": {"sim", "equi", "std", "pred_std", "cov", "total"},
    "xrecon": {"sim", "std", "cov", "ssl", "recon", "total"},
}


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", METHODS)
def test_shapes_and_terms(fast_cfg, name, size):
    torch.manual_seed(0)
    cfg = fast_cfg(f"method.name={name}", "method.decoder.recon_size=16", size=size)
    method = build_method(cfg)
    out = method(smooth_pairs(4, size))
    assert set(out.losses) == EXPECTED_TERMS[name]
    for term in out.losses.values():
        assert term.shape == () and torch.isfinite(term)
    parts = [v for k, v in out.losses.items() if k not in ("total", "ssl")]
    torch.testing.assert_close(out.total, sum(parts))
    r1, r2 = out.representations
    assert r1.shape == r2.shape == (4, 512)
    assert method.encode(torch.randn(3, 3, size, size)).shape == (3, 512)
    if name == "xrecon":
        assert out.reconstruction.shape == out.recon_target.shape == (4, 3, 16, 16)
        assert not out.reconstruction.requires_grad
    else:
        assert out.reconstruction is None
    out.total.backward()
    assert method.backbone.stem[0].weight.grad.abs().sum() > 0


def test_methods_are_compositions_of_one_code_path(fast_cfg):
    assert isinstance(build_method(fast_cfg("method.name=vicreg")), JointEmbedding)
    x = build_method(fast_cfg("method.name=xrecon"))
    assert isinstance(x, JointEmbedding) and isinstance(x, XRecon)
    assert x.projector[0].in_features == 256  # SSL loss sees the invariant half only
    assert build_method(fast_cfg("method.name=vicreg")).projector[0].in_features == 512
    sie = build_method(fast_cfg("method.name=sie", "model.inv_dim=384"))
    assert isinstance(sie, SIE)
    # SIE scales the projector widths by the split ratio: 128 * 384/512 = 96, 128 * 128/512 = 32
    assert sie.projector_inv.out_dim == 96 and sie.projector_equi.out_dim == 32


def test_xrecon_ssl_ignores_equivariant_channels(fast_cfg):
    """Gradients of the SSL term reach the invariant channels of the pooled representation only."""
    torch.manual_seed(0)
    m = build_method(fast_cfg("method.name=xrecon")).eval()
    r1 = torch.randn(4, 512, requires_grad=True)
    r2 = torch.randn(4, 512, requires_grad=True)
    m.ssl_terms(r1, r2)["total"].backward()
    assert r1.grad[:, :256].abs().sum() > 0
    assert r1.grad[:, 256:].abs().sum() == 0


def test_xrecon_attention_reads_the_configured_tokens(fast_cfg):
    """With the default design, changing the source view's equivariant channels must not change the
    reconstruction of the target (keys and values are the source's invariant tokens)."""
    torch.manual_seed(0)
    m = build_method(fast_cfg("method.name=xrecon")).eval()
    f1, f2 = torch.randn(2, 512, 2, 2), torch.randn(2, 512, 2, 2)
    base = m.reconstruct({1: f1, 2: f2}, target_view=1)
    f2_equi_changed = f2.clone()
    f2_equi_changed[:, 256:] += 5.0
    torch.testing.assert_close(m.reconstruct({1: f1, 2: f2_equi_changed}, 1), base)
    f2_inv_changed = f2.clone()
    f2_inv_changed[:, :256] += 5.0
    assert not torch.allclose(m.reconstruct({1: f1, 2: f2_inv_changed}, 1), base)


@pytest.mark.parametrize(
    "overrides",
    [
        ["method.xattn.query=source.full", "method.xattn.key=target.full", "method.xattn.value=target.full"],
        [
            "method.xattn.learned_projections=true",
            "method.xattn.heads=4",
            "method.xattn.attn_dim=64",
            "model.inv_dim=128",
        ],
        ["method.xattn.residual=false", "method.xattn.value=source.equi", "method.xattn.heads=2"],
        ["method.symmetric=true", "method.target_view=2"],
        ["method.base=simclr", "method.decoder.depth=2", "method.decoder.recon_size=24"],
    ],
)
def test_xrecon_switches(fast_cfg, overrides):
    torch.manual_seed(0)
    cfg = fast_cfg("method.name=xrecon", *overrides)
    m = build_method(cfg)
    out = m(smooth_pairs(4, 32))
    size = cfg.method.decoder.recon_size
    assert out.reconstruction.shape == (4, 3, size, size)
    assert torch.isfinite(out.total)
    assert ("nt_xent" in out.losses) == (cfg.method.base == "simclr")


def test_parameter_free_xattn_adds_no_parameters(fast_cfg):
    free = build_method(fast_cfg("method.name=xrecon"))
    assert sum(p.numel() for p in free.xattn.parameters()) == 0
    learned = build_method(fast_cfg("method.name=xrecon", "method.xattn.learned_projections=true"))
    assert sum(p.numel() for p in learned.xattn.parameters()) > 0


def test_recon_weight_scales_the_reconstruction_term(fast_cfg):
    pairs = smooth_pairs(4, 32)
    outs = []
    for w in (1.0, 0.25):
        torch.manual_seed(0)
        outs.append(build_method(fast_cfg("method.name=xrecon", f"loss.recon_weight={w}"))(pairs))
    torch.testing.assert_close(outs[1].losses["recon"], 0.25 * outs[0].losses["recon"])
    torch.testing.assert_close(outs[1].losses["ssl"], outs[0].losses["ssl"])


def test_symmetric_reconstruction_averages_both_views(fast_cfg):
    torch.manual_seed(0)
    m = build_method(fast_cfg("method.name=xrecon", "method.symmetric=true")).eval()
    pairs = smooth_pairs(4, 32)
    with torch.no_grad():
        out = m(pairs)
        f1, _ = m.backbone(pairs["view1"])
        f2, _ = m.backbone(pairs["view2"])
        per_view = [
            torch.nn.functional.mse_loss(m.reconstruct({1: f1, 2: f2}, t), resize_target(pairs[f"view{t}"], 32))
            for t in (1, 2)
        ]
    torch.testing.assert_close(out.metrics["recon_mse"], float((per_view[0] + per_view[1]) / 2), rtol=1e-5, atol=1e-6)


def test_sie_without_rotation_targets_fails_clearly(fast_cfg):
    m = build_method(fast_cfg("method.name=sie"))
    batch = smooth_pairs(4, 32)
    del batch["rel_rotation"]
    with pytest.raises(MissingTargetError, match="rel_rotation.*3D source"):
        m(batch)


def test_missing_views_fail_clearly(fast_cfg):
    m = build_method(fast_cfg("method.name=vicreg"))
    with pytest.raises(MissingTargetError, match="view2"):
        m({"view1": torch.randn(2, 3, 32, 32)})


def test_same_seed_same_first_step_loss(fast_cfg):
    def first_loss(seed):
        torch.manual_seed(seed)
        m = build_method(fast_cfg("method.name=xrecon"))
        return m(smooth_pairs(4, 32, seed=1)).total.item()

    assert first_loss(0) == first_loss(0)
    assert first_loss(0) != first_loss(1)


# Margin asserted: after 100 Adam steps on one fixed batch of 16 pairs the total loss is at most 60 %
# of its first value (measured: vicreg 0.49, simclr < 0.01, sie 0.11, xrecon 0.51), and for xrecon
# the reconstruction term alone falls to at most 50 %.
@pytest.mark.parametrize("name", METHODS)
def test_100_steps_on_a_fixed_batch_lower_the_loss(fast_cfg, name):
    torch.manual_seed(0)
    m = build_method(fast_cfg(f"method.name={name}"))
    pairs = smooth_pairs(16, 32, seed=1)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    hist, recon = [], []
    for _ in range(100):
        out = m(pairs)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        hist.append(out.total.item())
        if name == "xrecon":
            recon.append(out.losses["recon"].item())
    assert hist[-1] <= 0.6 * hist[0], (hist[0], hist[-1])
    if name == "xrecon":
        assert recon[-1] <= 0.5 * recon[0], (recon[0], recon[-1])
