"""The frozen-feature protocols' parts on small tensors with known answers (fast; the end-to-end protocol
tests with an oracle, a memorising and an uninformative encoder are in test_eval.py)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from rayeq.config import load_config
from rayeq.data.feed.targets import relative_color, relative_rotation_quaternion
from rayeq.eval.protocols import (
    PAIR_TARGETS,
    ProtocolSettings,
    _fit,
    _standardise,
    knn_top1,
    linear_probe,
    majority_top1,
    object_runs,
    pair_regression,
    regression,
    view_pairs,
)
from rayeq.metrics import AccuracyAccumulator, R2Accumulator, r2_global, r2_per_dim
from rayeq.models import feature_part as part


def test_parts_are_sie_channels():
    r = torch.arange(12.0).view(2, 6)
    torch.testing.assert_close(part(r, "inv", 4), r[:, :4])
    torch.testing.assert_close(part(r, "equi", 4), r[:, 4:])
    torch.testing.assert_close(part(r, "full", 4), r)


def test_settings_from_config_and_fast_caps():
    cfg = load_config(None, ["eval.rotation.epochs=40", "eval.rotation.hidden_dim=300", "eval.rotation.lr=0.01",
                             "eval.rotation.batch_size=32", "eval.rotation.seed=3", "eval.rotation.min_steps=7",
                             "eval.fast.max_epochs=5", "eval.fast.max_hidden_dim=64",
                             "eval.fast.min_steps=100"])  # fmt: skip
    s = ProtocolSettings.from_config(cfg.eval.rotation)
    assert (s.epochs, s.lr, s.batch_size, s.hidden_dim, s.seed, s.min_steps) == (40, 0.01, 32, 300, 3, 7)
    f = ProtocolSettings.from_config(cfg.eval.rotation, cfg.eval.fast)
    assert (f.epochs, f.lr, f.batch_size, f.hidden_dim, f.seed, f.min_steps) == (5, 0.01, 32, 64, 3, 100)
    assert ProtocolSettings.from_config(cfg.eval.linear).hidden_dim == 0  # a linear probe has no hidden layer


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.rows: list[int] = []

    def forward(self, x):
        self.rows.append(len(x))
        return self.lin(x)


@pytest.mark.parametrize("epochs, min_steps, n, batch, want_steps", [(3, 0, 10, 4, 9), (1, 10, 10, 4, 12),
                                                                     (2, 5, 8, 8, 5), (4, 0, 9, 4, 8)])  # fmt: skip
def test_fit_runs_the_epochs_or_the_minimum_steps_over_shuffled_batches(epochs, min_steps, n, batch, want_steps):
    """ceil(n / batch) steps an epoch (a last batch of one row is skipped: BatchNorm-free but noisy), for
    max(epochs, ceil(min_steps / steps per epoch)) epochs, each epoch from epoch_data(epoch)."""
    model = Counting()
    x, y = torch.randn(n, 2), torch.randn(n, 1)
    asked = []

    def data(epoch):
        asked.append(epoch)
        return x, y

    s = ProtocolSettings(epochs=epochs, lr=0.01, batch_size=batch, min_steps=min_steps)
    before = model.lin.weight.detach().clone()
    out = _fit(model, data, n, nn.functional.mse_loss, s)
    per_epoch = -(-n // batch)
    n_epochs = max(epochs, -(-min_steps // per_epoch))
    assert asked == list(range(n_epochs))
    full = [min(batch, n - i) for i in range(0, n, batch)]
    assert model.rows == [r for r in full if r >= 2] * n_epochs and len(model.rows) == want_steps
    assert not out.training and not torch.equal(before, model.lin.weight)


def test_standardise_uses_the_train_statistics_for_every_split():
    tr, va = torch.tensor([[1.0, 10.0], [3.0, 30.0]]), torch.tensor([[2.0, 50.0]])
    a, b = _standardise(tr, va)
    torch.testing.assert_close(a.mean(0), torch.zeros(2))
    torch.testing.assert_close(a.std(0), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(b, torch.tensor([[0.0, 30 / (10 * 2**0.5)]]), atol=1e-5, rtol=0)


def test_majority_top1_and_accuracy():
    assert majority_top1(torch.tensor([0, 2, 2, 1]), torch.tensor([2, 2, 0, 1, 2])) == pytest.approx(0.6)
    acc = AccuracyAccumulator()
    acc.update(torch.tensor([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0]]), torch.tensor([1, 1, 1]))
    acc.update(torch.tensor([[5.0, 1.0]]), torch.tensor([0]))
    assert acc.compute() == pytest.approx(0.75)


def test_knn_votes_with_temperature_weighted_cosine_similarity():
    """Two train points of class 0 at cosine 0.8 and one of class 1 at cosine 1: with k=3 the single close
    neighbour wins at a low temperature and the two farther ones at a high one; k=1 takes the nearest."""
    c = 0.8
    xtr = torch.tensor([[1.0, 0.0], [c, math.sqrt(1 - c * c)], [c, -math.sqrt(1 - c * c)], [-1.0, 0.0]])
    ytr = torch.tensor([1, 0, 0, 2])
    q, yq = torch.tensor([[2.0, 0.0]]), torch.tensor([1])  # the length does not matter: cosine
    assert knn_top1(xtr, ytr, q, yq, 3, k=1) == 1.0
    assert knn_top1(xtr, ytr, q, yq, 3, k=3, temperature=0.07) == 1.0  # e^(1/.07) > 2 e^(.8/.07)
    assert knn_top1(xtr, ytr, q, yq, 3, k=3, temperature=10.0) == 0.0  # e^.1 < 2 e^.08: class 0 wins
    assert knn_top1(xtr, ytr, -q, torch.tensor([2]), 3, k=1) == 1.0


def test_linear_probe_reports_held_out_and_train_top1():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.nn.functional.one_hot(y, 3).float() * 2 + 0.1 * torch.randn(60, 3, generator=g)
    yv = torch.tensor([0, 1, 2, 0])
    xv = torch.nn.functional.one_hot(yv, 3).float() * 2
    res = linear_probe(x, y, xv, yv, 3, ProtocolSettings(epochs=30, lr=0.05, batch_size=16))
    assert res == {"top1": 1.0, "train_top1": 1.0, "scored": 4}  # scored: how many held-out rows
    wrong = linear_probe(x, y, xv, (yv + 1) % 3, 3, ProtocolSettings(epochs=30, lr=0.05, batch_size=16))
    assert wrong["top1"] == 0.0 and wrong["train_top1"] == 1.0


def test_regression_fits_a_smooth_target_and_reports_the_mean_predictor():
    g = torch.Generator().manual_seed(0)
    x, xv = torch.randn(200, 3, generator=g) * 5 + 2, torch.randn(50, 3, generator=g) * 5 + 2
    w = torch.tensor([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]])
    y, yv = x @ w + torch.tensor([3.0, -7.0]), xv @ w + torch.tensor([3.0, -7.0])
    res = regression(x, y, xv, yv, ProtocolSettings(epochs=1, lr=3e-3, batch_size=32, hidden_dim=32, min_steps=600))
    assert res["r2"] > 0.95 and res["r2_per_dim"] > 0.95, res
    mean = y.mean(0).expand_as(yv)
    assert res["mean"] == {"r2": pytest.approx(r2_global(mean, yv)), "r2_per_dim": pytest.approx(r2_per_dim(mean, yv))}
    assert res["mean"]["r2_per_dim"] < 0.05 and res["mean"]["r2"] > 0.1  # different means per dimension


def test_object_runs_and_view_pairs():
    obj = torch.tensor([7, 7, 7, 3, 3, 9, 5, 5, 5, 5])
    starts, counts = object_runs(obj)
    assert starts.tolist() == [0, 3, 5, 6] and counts.tolist() == [3, 2, 1, 4]
    i, j = view_pairs(obj, 50, np.random.default_rng(0))
    assert len(i) == 3 * 50  # the single-view object 9 gives no pair
    assert (obj[i] == obj[j]).all() and (i != j).all()
    assert set(obj[i].tolist()) == {7, 3, 5}
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == {
        (a, b) for s, n in ((0, 3), (3, 2), (6, 4)) for a in range(s, s + n) for b in range(s, s + n) if a != b
    }  # every ordered pair of distinct views occurs


def test_pair_targets_are_the_targets_of_the_pair_maker():
    g = np.random.default_rng(0)
    a, b = g.uniform(-1, 1, (5, 7)), g.uniform(-1, 1, (5, 7))
    np.testing.assert_allclose(PAIR_TARGETS["rel_rotation"](a, b), relative_rotation_quaternion(a[:, :3], b[:, :3]))
    np.testing.assert_allclose(PAIR_TARGETS["rel_rotation_canonical"](a, b),
                               relative_rotation_quaternion(a[:, :3], b[:, :3], canonical=True))  # fmt: skip
    np.testing.assert_allclose(PAIR_TARGETS["rel_color"](a, b), relative_color(a, b, "sie"))
    np.testing.assert_allclose(PAIR_TARGETS["rel_color_cos_sin"](a, b), relative_color(a, b, "cos_sin"))


def _views(n_objects, views, seed):
    """Per-view features that hold the view's hues (an oracle for the colour change), grouped by object."""
    g = np.random.default_rng(seed)
    lat = g.uniform(0, 1, (n_objects * views, 7)).astype(np.float32)
    obj = torch.arange(n_objects).repeat_interleave(views)
    x = torch.from_numpy(lat[:, [3, 6]]).float()
    return x, obj, torch.from_numpy(lat)


def test_pair_regression_scores_held_out_and_train_pairs_against_the_mean():
    xtr, otr, ltr = _views(60, 4, 0)
    xva, ova, lva = _views(20, 4, 1)
    s = ProtocolSettings(epochs=1, lr=3e-3, batch_size=32, hidden_dim=64, min_steps=800)
    res = pair_regression(xtr, otr, ltr, xva, ova, lva, "rel_color", s, pairs_per_object=3, pair_seed=5)
    assert res["r2"] > 0.9 and res["r2_per_dim"] > 0.9 and res["r2_train"] > 0.9, res
    # the held-out pairs: 3 per object, rows of distinct views of one object, targets from their latents
    vi = res["rows"].numpy()
    assert len(vi) == 60 and res["pred"].shape == res["target"].shape == (60, 2)
    vj = view_pairs(ova, 3, np.random.default_rng(np.random.SeedSequence([5, 23])))[1]
    np.testing.assert_allclose(res["target"].numpy(), relative_color(lva[vi].numpy(), lva[vj].numpy()), atol=1e-6)
    assert r2_global(res["pred"], res["target"]) == pytest.approx(res["r2"])
    # the mean predictor: the train pairs' mean target, scored on the same pairs
    assert res["mean"]["r2"] == pytest.approx(r2_global(res["mean_value"].expand_as(res["target"]), res["target"]))
    assert abs(res["mean"]["r2_per_dim"]) < 0.1 and res["mean"]["r2_train"] <= 0.05
    # noise features: nothing to read
    noise = pair_regression(torch.randn_like(xtr), otr, ltr, torch.randn_like(xva), ova, lva, "rel_color", s, 3, 5)
    assert noise["r2"] <= noise["mean"]["r2"] + 0.05 and noise["r2_per_dim"] < 0.05, noise


def test_accumulators_count_exactly_past_float32_and_score_one_sample():
    """Counts are float64 so that they stay exact past 2^24 samples (a float32 count would stop at 16,777,216)."""
    acc = AccuracyAccumulator()
    acc.update(torch.tensor([[0.0, 1.0]]), torch.tensor([1]))
    assert acc.compute() == 1.0  # one sample, right
    acc.n += 2**24
    acc.correct += 2**24
    acc.update(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))  # one more, wrong
    assert acc.n.item() == 2**24 + 2 and acc.compute() == (2**24 + 1) / (2**24 + 2)
    r2 = R2Accumulator(1)
    r2.n += 2**24
    r2.update(torch.tensor([[1.0]]), torch.tensor([[2.0]]))
    assert r2.n.item() == 2**24 + 1 and r2.stats.dtype == torch.float64


def test_method_labels_say_which_labels_a_method_reads():
    from rayeq.methods import method_label

    assert method_label("sie") == "sie [uses rotation labels]"
    assert method_label("supervised") == "supervised [uses labels: transformation targets, classes]"
    assert method_label("xrecon") == "xrecon" and method_label("vicreg") == "vicreg"


def test_fits_are_reproducible_from_the_probe_seed():
    """The shuffling draws from the probe's own seeded generator, whatever the global torch state."""
    x, y = torch.randn(50, 3), torch.randn(50, 1)
    weights = []
    for global_seed in (1, 2):
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        torch.manual_seed(global_seed)
        _fit(model, lambda _: (x, y), 50, nn.functional.mse_loss, ProtocolSettings(epochs=3, lr=0.1, batch_size=8))
        weights.append(model.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)


def test_r2_does_not_depend_on_the_targets_scale():
    """R² and the mean predictor's R² are the same for targets in metres or in micrometres."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(40, 3, generator=g) + torch.tensor([0.0, 2.0, -1.0])
    pred = y + 0.5 * torch.randn(40, 3, generator=g)

    def r2(a, b):
        acc = R2Accumulator(3)
        acc.update(a, b)
        return acc.compute()

    base = r2(pred, y)
    for scale in (1e-3, 1e3):
        assert r2(pred * scale, y * scale) == pytest.approx(base, rel=1e-6), scale


def test_pair_regression_trains_on_one_fresh_pair_per_object_per_epoch_from_its_seed(monkeypatch):
    import rayeq.eval.protocols as protocols

    xtr, otr, ltr = _views(30, 4, 0)
    xva, ova, lva = _views(10, 4, 1)
    seen = []
    real_fit = protocols._fit

    def spy(model, epoch_data, n, loss_fn, s):
        seen.append((n, [epoch_data(e)[0] for e in range(3)]))
        return real_fit(model, epoch_data, n, loss_fn, s)

    monkeypatch.setattr(protocols, "_fit", spy)
    s = ProtocolSettings(epochs=2, lr=1e-3, batch_size=16, hidden_dim=8)
    runs = [pair_regression(xtr, otr, ltr, xva, ova, lva, "rel_color", ProtocolSettings(**{**s.__dict__, "seed": k}))
            for k in (0, 0, 1)]  # fmt: skip
    (n, draws), (_, again), (_, other) = seen
    assert n == 30 and all(len(x) == 30 for x in draws)  # one pair per train object per epoch
    assert not torch.equal(draws[0], draws[1])  # fresh pairs each epoch
    assert all(torch.equal(a, b) for a, b in zip(draws, again, strict=True))  # the same from the same seed
    assert not torch.equal(draws[0], other[0])
    assert runs[0]["r2"] == runs[1]["r2"]


def test_a_feature_dead_on_the_train_rows_cannot_blow_up_held_out_predictions():
    """An untrained encoder has features that are (nearly) constant on the train rows and fire on held-out ones;
    standardised with the train std they reach thousands of standard deviations. Clipped, the probe scores on
    held-out rows what it scores without that feature."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 4, generator=g)
    y = x[:, :1] * 2 + 0.1 * torch.randn(600, 1, generator=g)
    dead = torch.cat([torch.zeros(500, 1), torch.rand(100, 1, generator=g)])  # 0 on the train rows, up to 1 after
    nearly = torch.cat([1e-7 * torch.randn(500, 1, generator=g), torch.rand(100, 1, generator=g)])
    heavy = torch.cat([torch.randn(500, 1, generator=g), 1e4 * torch.ones(100, 1)])  # alive, far out on held-out rows
    xs = torch.cat([x, dead, nearly, heavy], 1)
    s = ProtocolSettings(epochs=40, batch_size=64, hidden_dim=32, lr=3e-3)
    with_dead = regression(xs[:500], y[:500], xs[500:], y[500:], s)["r2_per_dim"]
    without = regression(x[:500], y[:500], x[500:], y[500:], s)["r2_per_dim"]
    assert without > 0.9 and with_dead > without - 0.15, (with_dead, without)
    ztr, z = _standardise(xs[:500], xs[500:])
    assert (z[:, 4:6] == 0).all() and (ztr[:, 4:6] == 0).all()  # dead and nearly dead: nothing to learn, set to 0
    assert (z[:, 6] == 5.0).all() and z[:, :4].abs().max() < 5.0  # clipped only where it must be
    assert ztr[:, :4].mean(0).abs().max() < 1e-5 and (ztr[:, :4].std(0) - 1).abs().max() < 1e-3
