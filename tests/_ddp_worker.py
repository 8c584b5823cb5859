"""Run by test_losses.py in 2 gloo processes: each rank computes the losses on its half of a batch."""

import os
import sys

import torch
import torch.distributed as dist

from rayeq.config import load_config
from rayeq.losses import nt_xent_loss, vicreg_loss
from rayeq.methods import build_method
from rayeq.metrics import AccuracyAccumulator, R2Accumulator


def sie_method():
    """A small SIE in eval mode (BatchNorm on its running statistics, so that half a batch and the whole batch
    see the same normalisation and only the loss's own cross-rank gathering differs)."""
    torch.manual_seed(0)
    cfg = load_config(None, ["method.name=sie", "model.stem=compact", "model.projector=[64,64]",
                             "data.image_size=16"])  # fmt: skip
    return build_method(cfg).eval()


def main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    full = torch.load(os.path.join(out_dir, "inputs.pt"))
    b = full["z1"].shape[0] // world
    sl = slice(rank * b, (rank + 1) * b)
    results = {}
    for name in ("vicreg", "simclr"):
        z1 = full["z1"][sl].clone().requires_grad_(True)
        z2 = full["z2"][sl].clone().requires_grad_(True)
        loss = vicreg_loss(z1, z2)["total"] if name == "vicreg" else nt_xent_loss(z1, z2, temperature=0.5)
        loss.backward()
        results[name] = {"loss": loss.detach(), "g1": z1.grad, "g2": z2.grad}
    sie = sie_method()
    out = sie({k: full[k][sl] for k in ("view1", "view2", "rel_rotation")})
    out.total.backward()
    results["sie"] = {"loss": out.total.detach(), "terms": {k: v.detach() for k, v in out.losses.items()},
                      "grads": {n: p.grad for n, p in sie.named_parameters() if p.grad is not None}}  # fmt: skip
    r2, acc = R2Accumulator(3), AccuracyAccumulator()  # each rank sees its half; all_reduce sums the halves
    r2.update(full["pred"][sl], full["y"][sl])
    acc.update(full["logits"][sl], full["labels"][sl])
    r2.all_reduce()
    acc.all_reduce()
    results["metrics"] = {"r2": r2.compute(), "top1": acc.compute()}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
