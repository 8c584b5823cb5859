import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rayeq.losses import covariance_term, invariance_term, nt_xent_loss, variance_term, vicreg_loss
from rayeq.metrics import AccuracyAccumulator, R2Accumulator


def test_vicreg_terms_on_known_inputs():
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])
    assert invariance_term(z, z).item() == 0.0
    # constant column -> std sqrt(1e-4) = 0.01 -> hinge 0.99; other column std 2 -> 0
    c = torch.tensor([[1.0, 0.0], [1.0, 2.0], [1.0, 4.0]])
    torch.testing.assert_close(variance_term(c), torch.tensor((0.99 + 0.0) / 2))
    # two identical columns with variance 4: off-diagonal cov = 4 (twice), sum of squares 32, / D=2 -> 16
    d = torch.tensor([[0.0, 0.0], [2.0, 2.0], [4.0, 4.0]])
    torch.testing.assert_close(covariance_term(d), torch.tensor(16.0))
    # uncorrelated columns -> 0
    e = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    torch.testing.assert_close(covariance_term(e), torch.tensor(0.0))


def test_vicreg_weights_and_total():
    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 8), torch.randn(16, 8)
    t = vicreg_loss(z1, z2, sim_weight=2.0, std_weight=3.0, cov_weight=5.0)
    torch.testing.assert_close(t["sim"], 2.0 * F.mse_loss(z1, z2))
    torch.testing.assert_close(t["std"], 3.0 * (variance_term(z1) + variance_term(z2)) / 2)
    torch.testing.assert_close(t["cov"], 5.0 * (covariance_term(z1) + covariance_term(z2)))
    torch.testing.assert_close(t["total"], t["sim"] + t["std"] + t["cov"])


def _nt_xent_reference(z1, z2, temperature):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    losses = []
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        sims = torch.stack([z[i] @ z[j] / temperature for j in range(2 * n) if j != i])
        pos_idx = pos if pos < i else pos - 1
        losses.append(-sims[pos_idx] + torch.logsumexp(sims, dim=0))
    return torch.stack(losses).mean()


def test_nt_xent_matches_reference_and_rewards_alignment():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    torch.testing.assert_close(nt_xent_loss(z1, z2, 0.3), _nt_xent_reference(z1, z2, 0.3))
    aligned = nt_xent_loss(z1, z1 + 0.01 * torch.randn(6, 5), 0.1)
    assert aligned < nt_xent_loss(z1, z2, 0.1) - 1.0


def test_losses_under_ddp_match_the_full_batch(tmp_path):
    """2 gloo ranks, each with half the batch: the gathered losses equal the single-process loss on the
    whole batch, and each rank's input gradient is world_size x the full-batch gradient of its half
    (DDP then divides by world_size when it averages parameter gradients). The same for SIE as a whole
    method: the mean of the ranks' losses and parameter gradients is the full batch's."""
    import torch.distributed as dist
    from _ddp_worker import sie_method

    from rayeq.losses.distributed import _GatherWithGrad, rank, world_size

    from conftest import smooth_pairs

    # the gather's autograd function in this process too, in a one-rank group: the identity, gradient included
    # (and, under mutation testing, what ties this test to the code the two ranks below run)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg1'}", rank=0, world_size=1)
    try:
        x = torch.randn(3, 2, requires_grad=True)
        (out,) = _GatherWithGrad.apply(x)
        (out * torch.arange(6.0).view(3, 2)).sum().backward()
        assert torch.equal(out, x) and torch.equal(x.grad, torch.arange(6.0).view(3, 2))
        assert (rank(), world_size()) == (0, 1)
    finally:
        dist.destroy_process_group()
    assert (rank(), world_size()) == (0, 1)  # and without a process group at all

    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 6), torch.randn(16, 6)
    labels = torch.arange(16) % 4
    logits = torch.randn(16, 4)
    logits[:11] += 5 * F.one_hot(labels[:11], 4)  # 8 right on rank 0, at least 3 on rank 1
    metric_inputs = {"pred": torch.randn(16, 3), "y": torch.randn(16, 3) * 2 + 1, "logits": logits, "labels": labels}
    torch.save({"z1": z1, "z2": z2, **smooth_pairs(16, 16, seed=4), **metric_inputs}, tmp_path / "inputs.pt")
    worker = Path(__file__).with_name("_ddp_worker.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    logs = [open(tmp_path / f"rank{r}.log", "w") for r in range(2)]  # noqa: SIM115
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(r), "2", str(tmp_path / "init"), str(tmp_path)],
            env=env, stdout=logs[r], stderr=subprocess.STDOUT,
        )
        for r in range(2)
    ]  # fmt: skip
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
        for f in logs:
            f.close()
    detail = "\n".join((tmp_path / f"rank{r}.log").read_text()[-2000:] for r in range(2))
    assert codes == [0, 0], f"DDP workers failed: {codes}\n{detail}"
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    for name in ("vicreg", "simclr"):
        a1, a2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        full = (
            vicreg_loss(a1, a2, gather=False)["total"] if name == "vicreg" else nt_xent_loss(a1, a2, 0.5, gather=False)
        )
        full.backward()
        mean_rank_loss = sum(r[name]["loss"] for r in ranks) / 2
        torch.testing.assert_close(mean_rank_loss, full.detach(), rtol=1e-5, atol=1e-6)
        g1 = torch.cat([r[name]["g1"] for r in ranks]) / 2
        g2 = torch.cat([r[name]["g2"] for r in ranks]) / 2
        torch.testing.assert_close(g1, a1.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(g2, a2.grad, rtol=1e-4, atol=1e-6)

    # the metric accumulators: every rank's all-reduced score is the full batch's
    r2, acc = R2Accumulator(3), AccuracyAccumulator()
    r2.update(metric_inputs["pred"], metric_inputs["y"])
    acc.update(metric_inputs["logits"], metric_inputs["labels"])
    r2.all_reduce()  # a no-op in one process
    acc.all_reduce()
    assert 0.6 < acc.compute() < 1.0
    for r in ranks:
        assert r["metrics"]["r2"] == pytest.approx(r2.compute())
        assert r["metrics"]["top1"] == pytest.approx(acc.compute())

    sie = sie_method()
    out = sie(smooth_pairs(16, 16, seed=4))
    out.total.backward()
    for k, v in out.losses.items():  # every term, the batch-wide ones (std, pred_std, cov) among them
        torch.testing.assert_close(sum(r["sie"]["terms"][k] for r in ranks) / 2, v.detach(), rtol=1e-5, atol=1e-6,
                                   msg=k)  # fmt: skip
    grads = {n: p.grad for n, p in sie.named_parameters() if p.grad is not None}
    assert set(grads) == set(ranks[0]["sie"]["grads"]) and len(grads) > 10
    for n, g in grads.items():
        torch.testing.assert_close((ranks[0]["sie"]["grads"][n] + ranks[1]["sie"]["grads"][n]) / 2, g,
                                   rtol=1e-4, atol=1e-6, msg=n)  # fmt: skip


def test_reconstruction_target_is_torchvisions_antialiased_bilinear_resize():
    import torchvision.transforms.v2.functional as TF

    from rayeq.losses import reconstruction_loss, resize_target

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g)
    for size in (16, 24, 9):
        torch.testing.assert_close(resize_target(x, size), TF.resize(x, [size, size], antialias=True))
    assert resize_target(x, 32) is x  # already the decoder's size: untouched
    for wide in (x[..., :16], x[..., :16, :]):  # not square: resized whichever side matches
        torch.testing.assert_close(resize_target(wide, 16), TF.resize(wide, [16, 16], antialias=True))
    up = resize_target(x[:, :, :8, :8], 16)
    torch.testing.assert_close(up, TF.resize(x[:, :, :8, :8], [16, 16], antialias=True))
    y = torch.randn(2, 3, 16, 16, generator=g)
    torch.testing.assert_close(reconstruction_loss(y, up), ((y - up) ** 2).mean())


def test_nt_xent_default_temperature_is_simclrs():
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    torch.testing.assert_close(nt_xent_loss(z1, z2), _nt_xent_reference(z1, z2, 0.1))


def test_covariance_term_matches_numpy_on_offset_columns_and_vicreg_defaults():
    """Each dimension centred on its own mean (columns far from zero and from each other), as np.cov; VICReg's
    default weights are the paper's 25 / 25 / 1."""
    import numpy as np

    g = torch.Generator().manual_seed(0)
    z = torch.randn(20, 4, generator=g) + torch.tensor([10.0, -3.0, 0.5, 100.0])
    cov = np.cov(z.numpy().astype(np.float64), rowvar=False)
    off = cov - np.diag(np.diag(cov))
    torch.testing.assert_close(covariance_term(z), torch.tensor((off**2).sum() / 4, dtype=torch.float32))
    z1, z2 = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    for k, v in vicreg_loss(z1, z2, 25.0, 25.0, 1.0).items():
        torch.testing.assert_close(vicreg_loss(z1, z2)[k], v, msg=k)
