import math

import pytest
import torch

from rayeq.models import (
    ConvDecoder,
    CrossAttention,
    HyperPredictor,
    Projector,
    ResNetBackbone,
    split_features,
    to_tokens,
)


@pytest.mark.parametrize(
    "arch, stem, size, dim, fmap",
    [
        ("resnet18", "small", 32, 512, 4),
        ("resnet18", "small", 64, 512, 8),
        ("resnet18", "compact", 64, 512, 4),
        ("resnet18", "imagenet", 64, 512, 2),
        ("resnet50", "compact", 32, 2048, 2),
    ],
)
def test_backbone_returns_map_and_pooled(arch, stem, size, dim, fmap):
    net = ResNetBackbone(arch, stem).eval()
    x = torch.randn(2, 3, size, size)
    f, r = net(x)
    assert f.shape == (2, dim, fmap, fmap)
    assert r.shape == (2, dim)
    torch.testing.assert_close(r, f.mean(dim=(2, 3)))
    assert not any(isinstance(m, torch.nn.Linear) for m in net.modules())  # classifier dropped


def test_unknown_backbone_and_stem():
    with pytest.raises(ValueError, match="resnet34"):
        ResNetBackbone("resnet34")
    with pytest.raises(ValueError, match="stem"):
        ResNetBackbone("resnet18", stem="tiny")


def test_split_is_sie_convention_for_vectors_maps_and_tokens():
    r = torch.arange(10.0).view(1, 10)
    inv, equi = split_features(r, 4)
    assert inv.tolist() == [[0, 1, 2, 3]] and equi.tolist() == [[4, 5, 6, 7, 8, 9]]
    fmap = torch.randn(2, 10, 3, 3)
    tok = to_tokens(fmap)
    assert tok.shape == (2, 9, 10)
    torch.testing.assert_close(tok[:, 4, :], fmap[:, :, 1, 1])  # token 4 = centre position
    t_inv, t_equi = split_features(tok, 4, dim=-1)
    m_inv, _ = split_features(fmap, 4)
    assert t_inv.shape == (2, 9, 4) and t_equi.shape == (2, 9, 6)
    torch.testing.assert_close(t_inv, to_tokens(m_inv))


def test_projector_layout():
    p = Projector(16, [32, 32, 8])
    kinds = [type(m).__name__ for m in p]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert p[-1].bias is None and p.out_dim == 8
    assert p(torch.randn(5, 16)).shape == (5, 8)


def test_parameter_free_attention_has_no_parameters_and_matches_hand_computation():
    attn = CrossAttention(q_dim=2, k_dim=2, v_dim=2, heads=1, learned_projections=False, residual=False)
    assert sum(p.numel() for p in attn.parameters()) == 0
    q = torch.tensor([[[1.0, 0.0]]])  # (B=1, Nq=1, d=2)
    k = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (1, Nk=2, 2)
    v = torch.tensor([[[2.0, 4.0], [6.0, 8.0]]])
    # scores = [1, 0] / sqrt(2); weights = softmax -> a = e^(1/sqrt2) / (e^(1/sqrt2) + 1)
    a = math.exp(1 / math.sqrt(2)) / (math.exp(1 / math.sqrt(2)) + 1)
    expected = torch.tensor([[[a * 2 + (1 - a) * 6, a * 4 + (1 - a) * 8]]])
    torch.testing.assert_close(attn(q, k, v), expected)
    res = CrossAttention(2, 2, 2, residual=True)
    torch.testing.assert_close(res(q, k, v), expected + q)


def test_parameter_free_attention_matches_softmax_formula_random_and_multihead():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 5, 8), torch.randn(3, 7, 8), torch.randn(3, 7, 8)
    one = CrossAttention(8, 8, 8, heads=1, residual=False)
    ref = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(8), dim=-1) @ v
    torch.testing.assert_close(one(q, k, v), ref)
    two = CrossAttention(8, 8, 8, heads=2, residual=False)
    halves = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        halves.append(torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / 2.0, dim=-1) @ v[..., sl])
    torch.testing.assert_close(two(q, k, v), torch.cat(halves, dim=-1))


def test_learned_attention_shapes_and_parameters():
    attn = CrossAttention(q_dim=12, k_dim=20, v_dim=20, heads=4, learned_projections=True, attn_dim=16, residual=True)
    assert sum(p.numel() for p in attn.parameters()) > 0
    out = attn(torch.randn(2, 9, 12), torch.randn(2, 9, 20), torch.randn(2, 9, 20))
    assert out.shape == (2, 9, 12) and attn.out_dim == 12
    no_res = CrossAttention(12, 20, 20, heads=4, learned_projections=True, attn_dim=16, residual=False)
    assert no_res(torch.randn(2, 9, 12), torch.randn(2, 9, 20), torch.randn(2, 9, 20)).shape == (2, 9, 16)


@pytest.mark.parametrize("residual", [True, False])
def test_learned_attention_matches_multi_head_formula(residual):
    """out = W_o concat_h softmax(Q_h K_hᵀ / sqrt(d_h)) V_h (+ q), with Q = W_q q, K = W_k k, V = W_v v."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 12), torch.randn(2, 7, 20), torch.randn(2, 7, 18)
    attn = CrossAttention(12, 20, 18, heads=4, learned_projections=True, attn_dim=16, residual=residual)
    Q, K, V = attn.q_proj(q), attn.k_proj(k), attn.v_proj(v)
    heads = [torch.softmax(Q[..., 4 * h : 4 * h + 4] @ K[..., 4 * h : 4 * h + 4].transpose(1, 2) / 2.0, -1)
             @ V[..., 4 * h : 4 * h + 4] for h in range(4)]  # fmt: skip
    want = attn.out_proj(torch.cat(heads, -1)) + (q if residual else 0)
    torch.testing.assert_close(attn(q, k, v), want)
    assert attn.out_proj.out_features == (12 if residual else 16) == attn.out_dim


def test_attention_refuses_bad_widths():
    with pytest.raises(ValueError, match="^parameter-free attention needs q_dim == k_dim, got 4 and 6$"):
        CrossAttention(4, 6, 6)
    with pytest.raises(ValueError, match="^residual needs v_dim == q_dim, got 6 and 4$"):
        CrossAttention(4, 4, 6, residual=True)
    with pytest.raises(ValueError, match="^heads=3 must divide q_dim=8$"):
        CrossAttention(8, 8, 8, heads=3)
    with pytest.raises(ValueError, match="^heads=4 must divide v_dim=10$"):
        CrossAttention(8, 8, 10, heads=4, residual=False)
    with pytest.raises(ValueError, match="^heads=3 must divide attn_dim=16$"):
        CrossAttention(6, 6, 6, heads=3, learned_projections=True, attn_dim=16)
    CrossAttention(4, 4, 6, residual=False)  # different widths are fine without a residual
    CrossAttention(5, 7, 9, heads=2, learned_projections=True, attn_dim=8)  # projections map any widths


@pytest.mark.parametrize("in_size, out_size", [(4, 32), (8, 32), (2, 64), (8, 8), (7, 30)])
def test_decoder_output_size(in_size, out_size):
    dec = ConvDecoder(in_dim=16, in_size=in_size, out_size=out_size, width=32, depth=2)
    assert dec(torch.randn(2, 16, in_size, in_size)).shape == (2, 3, out_size, out_size)


def test_hyper_predictor_is_a_linear_map_of_the_parameters():
    torch.manual_seed(0)
    pred = HyperPredictor(dim=3, param_dim=4, kind="linear", bias=False)
    z, q1, q2 = torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 4)
    # W is linear in q without bias: W(q1 + q2) z = W(q1) z + W(q2) z
    torch.testing.assert_close(pred(z, q1 + q2), pred(z, q1) + pred(z, q2))
    w = pred.hypernet.weight @ q1[0]  # (9,)
    torch.testing.assert_close(pred(z, q1)[0], w.view(3, 3) @ z[0])


def test_attention_defaults():
    """One head, parameter-free, with a residual; learned projections default to 256 wide."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    ref = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1) @ v + q
    torch.testing.assert_close(CrossAttention(4, 4, 4)(q, k, v), ref)
    assert CrossAttention(4, 4, 4, learned_projections=True).q_proj.out_features == 256
