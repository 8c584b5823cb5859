"""The per-worker training function that Ray Train's TorchTrainer runs on every worker.

Ray stays at the edges: the method, losses and probes are plain PyTorch; this function wires them
to the dataset shard, DDP (`prepare_model`), checkpoints and `ray.train.report`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rayeq.config import ExperimentConfig
from rayeq.data.pipeline import to_model_batch
from rayeq.methods import build_method
from rayeq.train.optim import build_optimizer, build_scheduler
from rayeq.train.probes import FloorProbes, OnlineProbes, ProbeMetrics

STATE_FILE = "state.pt"


class TrainModule(nn.Module):
    """The method, its online probes and (optionally) the floor probes on the untrained encoder, in one
    module so that DDP synchronises them all."""

    def __init__(self, method: nn.Module, probes: OnlineProbes, floor: FloorProbes | None = None):
        super().__init__()
        self.method, self.probes, self.floor = method, probes, floor

    def probe_parameters(self) -> list[nn.Parameter]:
        floor = list(self.floor.probes.parameters()) if self.floor is not None else []
        return [*self.probes.parameters(), *floor]

    def forward(self, batch):
        out = self.method(batch)
        probe_loss, probe_out = self.probes(*out.representations, batch)
        if self.floor is not None:
            floor_loss, probe_out["floor"] = self.floor(batch)
            probe_loss = probe_loss + floor_loss
        return out, probe_loss, probe_out


def build_module(cfg: ExperimentConfig, num_classes: int, regress: dict[str, int]) -> TrainModule:
    method = build_method(cfg, num_classes)

    def probes():
        return OnlineProbes(method.feature_dim, cfg.model.inv_dim, num_classes, regress, cfg.eval.rotation.hidden_dim)

    floor = FloorProbes(method.backbone, probes()) if cfg.train.floor_probes else None  # before any step
    return TrainModule(method, probes(), floor)


def train_step(train_module, module: TrainModule, batch, optimizer, probe_optimizer, scheduler, cfg, autocast):
    """One optimisation step of the method and its probes (the Ray loop's and `rayeq bench`'s)."""
    with autocast:
        out, probe_loss, probe_out = train_module(batch)
    optimizer.zero_grad(set_to_none=True)
    probe_optimizer.zero_grad(set_to_none=True)
    (out.total + probe_loss).backward()
    if cfg.optim.grad_clip:
        torch.nn.utils.clip_grad_norm_(module.method.parameters(), cfg.optim.grad_clip)
    optimizer.step()
    probe_optimizer.step()
    scheduler.step()
    return out, probe_out


class CheckpointMismatch(RuntimeError):
    pass


def _unwrap(module: nn.Module) -> TrainModule:
    module = getattr(module, "_orig_mod", module)  # torch.compile
    return getattr(module, "module", module)  # DDP


def _state_dicts(module, optimizer, probe_optimizer, scheduler, scaler) -> dict[str, dict]:
    """What a checkpoint holds of the training state (and what a resumed worker must hold again)."""
    return {"model": _unwrap(module).state_dict(), "optimizer": optimizer.state_dict(),
            "probe_optimizer": probe_optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict()}  # fmt: skip


def image_grid(batch, out, mean, std, n: int = 8) -> np.ndarray:
    """Rows: view 1, view 2 and, for xrecon, the reconstruction target and the reconstruction."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)

    def img(x):
        x = x[:n].detach().float().cpu()
        return ((x * s + m).clamp(0, 1) * 255).to(torch.uint8)

    rows = [img(batch["view1"]), img(batch["view2"])]
    if out.reconstruction is not None:
        size = batch["view1"].shape[-1]
        up = lambda x: torch.nn.functional.interpolate(x[:n].float(), size=(size, size), mode="nearest")  # noqa: E731
        rows += [img(up(out.recon_target)), img(up(out.reconstruction))]
    grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)  # (3, rows*S, n*S)
    return grid.permute(1, 2, 0).numpy()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = ExperimentConfig.model_validate(config["cfg"])
    info = config["info"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    precision = cfg.train.precision if cfg.train.precision != "auto" else ("bf16" if on_gpu else "fp32")
    torch.manual_seed(cfg.train.seed)
    is_main = rank == 0
    # Ray Train patches print() in workers to log through the root logger (every line shows twice)
    # and logs each report at INFO: write progress directly and keep Train's own logs to warnings.
    _quiet_train_console()
    say = _write if is_main else (lambda *a, **k: None)

    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    module = build_module(cfg, info["num_classes"], info["regress"])
    if on_gpu and world > 1 and cfg.train.sync_batchnorm:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if cfg.train.channels_last:
        module = module.to(memory_format=torch.channels_last)

    per_worker_batch = cfg.train.batch_size // world
    steps_per_epoch = max(1, (info["n_train"] // world) // per_worker_batch)
    if cfg.train.steps_per_epoch:  # a cap, the same on every rank (DDP needs equal step counts)
        steps_per_epoch = min(steps_per_epoch, cfg.train.steps_per_epoch)
    optimizer = build_optimizer(list(module.method.parameters()), cfg)
    probe_optimizer = torch.optim.AdamW(module.probe_parameters(), lr=1e-3, weight_decay=0.0)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler(enabled=False)  # bf16 needs no loss scaling; kept for the checkpoint format

    start_epoch, step, run_id, best = 0, 0, None, {}
    checkpoint = ray.train.get_checkpoint()
    resumed = checkpoint is not None
    if resumed:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
        if state["config_hash"] != info["config_hash"] and not info["force"]:
            raise CheckpointMismatch(
                f"checkpoint was made under config {state['config_hash']}, this run is {info['config_hash']}; "
                "rerun with --force to load it anyway"
            )
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        probe_optimizer.load_state_dict(state["probe_optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step, run_id = state["epoch"], state["step"], state.get("tracker_run_id")
        if info.get("record_resume"):  # test hook: what this worker holds once restored
            held = {**_state_dicts(module, optimizer, probe_optimizer, scheduler, scaler), "epoch": start_epoch,
                    "step": step}  # fmt: skip
            torch.save(held, Path(info["run_dir"]) / f".resumed_state.rank{rank}.pt")
        say(f"resumed from checkpoint at epoch {start_epoch} (step {step})")

    module = ray.train.torch.prepare_model(module, parallel_strategy_kwargs={"find_unused_parameters": False})
    train_module = torch.compile(module) if cfg.train.compile else module

    tracker = None
    if is_main:
        from rayeq.track import open_tracker

        tracker = open_tracker(cfg.track.backend, info["track_repo"], cfg.track.experiment or cfg.train.name, run_id)
        if not resumed:
            tracker.log_params({**cfg.to_dict(), **info.get("extra_params", {})})
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    fail_at = info.get("fail_at_epoch")
    epochs = cfg.train.epochs
    if start_epoch >= epochs:
        say(f"run already complete ({start_epoch}/{epochs} epochs); raise train.epochs to continue")
    t_run = time.perf_counter()
    last_val: dict[str, float] = {}
    for epoch in range(start_epoch, epochs):
        module.train()
        metrics_acc = ProbeMetrics(info["regress"], device)
        floor_acc = ProbeMetrics(info["regress"], device) if cfg.train.floor_probes else None
        sums: dict[str, float] = {}
        n_steps, t_epoch = 0, time.perf_counter()
        t_first = None  # steady-state throughput is timed from the first batch's arrival
        last = None
        shard = ray.train.get_dataset_shard("train")
        batches = shard.iter_torch_batches(
            batch_size=per_worker_batch, drop_last=True, prefetch_batches=2,
            local_shuffle_buffer_size=max(4 * per_worker_batch, 256),  # mix rows of different blocks
        )  # fmt: skip
        for raw in batches:
            if n_steps >= steps_per_epoch:
                break
            if t_first is None:
                t_first = time.perf_counter()
            batch = to_model_batch(raw, info["mean"], info["std"], device, cfg.train.channels_last)
            out, probe_out = train_step(train_module, _unwrap(module), batch, optimizer, probe_optimizer, scheduler,
                                        cfg, autocast)  # fmt: skip
            step += 1
            n_steps += 1
            metrics_acc.update(probe_out)
            if floor_acc is not None:
                floor_acc.update(probe_out["floor"])
            for k, v in out.losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            last = (batch, out)
            if fail_at is not None and epoch == fail_at and n_steps == 2 and rank == world - 1:
                _inject_failure(info, rank, epoch)
            if is_main and (n_steps % cfg.train.log_every_steps == 0 or n_steps == steps_per_epoch):
                elapsed = time.perf_counter() - t_first
                ips = 2 * cfg.train.batch_size * (n_steps - 1) / max(elapsed, 1e-9) if n_steps > 1 else 0.0
                done = (epoch - start_epoch) * steps_per_epoch + n_steps
                left = (epochs - start_epoch) * steps_per_epoch - done
                eta = (time.perf_counter() - t_run) / max(done, 1) * left
                terms = " ".join(f"{k}={float(v.detach()):.3f}" for k, v in out.losses.items() if k != "total")
                say(f"epoch {epoch + 1}/{epochs} step {n_steps}/{steps_per_epoch} loss {float(out.total.detach()):.4f} "
                    f"({terms}) {ips:.0f} img/s ETA {_fmt(eta)}")  # fmt: skip
                tracker.log_metrics({f"loss/{k}": float(v.detach()) for k, v in out.losses.items()}, step, epoch)
        if n_steps == 0:
            raise RuntimeError(
                f"worker {rank} got no full batch of {per_worker_batch} in epoch {epoch + 1}: "
                f"{info['n_train']} training rows for train.batch_size={cfg.train.batch_size} on {world} workers"
            )
        t_end = time.perf_counter()
        epoch_time = t_end - t_epoch
        steady = 2 * cfg.train.batch_size * (n_steps - 1) / max(t_end - t_first, 1e-9) if n_steps > 1 else 0.0
        metrics: dict[str, float] = {f"train/{k}": v / n_steps for k, v in sums.items()}
        metrics.update(metrics_acc.compute("train"))
        if floor_acc is not None:
            metrics.update(floor_acc.compute("train/floor"))
        # validate every N epochs, at the end, and in the first epoch of a session (so that the val
        # metrics, the checkpoint score among them, are in every report)
        if info["has_val"] and ((epoch + 1) % cfg.train.val_every_epochs == 0 or epoch + 1 == epochs or not last_val):
            val_shard = ray.train.get_dataset_shard("val")
            last_val = _validate(_unwrap(module), val_shard, cfg, info, device, autocast, world)
            last_val["val/epoch"] = epoch + 1
        if info["has_val"] and last_val:
            metrics.update(last_val)  # between val epochs the latest val metrics are carried forward
        metrics.update({
            "epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0],
            "images_per_sec": steady,  # steady state, from the first batch to the last
            "epoch_images_per_sec": 2 * cfg.train.batch_size * n_steps / epoch_time,  # incl. pipeline start
            "epoch_seconds": epoch_time,
        })  # fmt: skip
        score_key = info["score_attribute"]
        if metrics.get(score_key, -math.inf) > best.get(score_key, -math.inf):
            best = dict(metrics)

        ckpt_obj = None
        with tempfile.TemporaryDirectory() as tmp:
            if is_main:
                state = {
                    **_state_dicts(module, optimizer, probe_optimizer, scheduler, scaler),
                    "epoch": epoch + 1, "step": step,
                    "config_hash": info["config_hash"], "config": cfg.to_dict(),
                    "tracker_run_id": tracker.run_id, "track_repo": info["track_repo"], "metrics": metrics,
                    "data": {"mean": info["mean"], "std": info["std"], "num_classes": info["num_classes"]},
                }  # fmt: skip
                torch.save(state, Path(tmp) / STATE_FILE)
                ckpt_obj = ray.train.Checkpoint.from_directory(tmp)
                tracker.log_metrics({k: v for k, v in metrics.items() if "/" in k and k.startswith("train")},
                                    step, epoch + 1, subset="train")  # fmt: skip
                tracker.log_metrics({k: v for k, v in metrics.items() if k.startswith("val/")}, step, epoch + 1, "val")
                tracker.log_metrics({"images_per_sec": metrics["images_per_sec"], "lr": metrics["lr"]}, step, epoch + 1)
                if (epoch + 1) % cfg.track.image_every_epochs == 0 and last is not None:
                    grid = image_grid(*last, info["mean"], info["std"])
                    caption = "rows: view 1, view 2[, reconstruction target, reconstruction]"
                    tracker.log_image("views_and_reconstructions", grid, step, epoch + 1, caption=caption)
                if info.get("run_dir"):
                    with open(Path(info["run_dir"]) / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(metrics) + "\n")
                shown = {
                    k: round(v, 4) for k, v in metrics.items() if k.startswith(("val/", "train/top1", "train/rot"))
                }
                say(f"epoch {epoch + 1}/{epochs} done in {epoch_time:.1f}s: loss {metrics['train/total']:.4f}, "
                    f"{steady:.0f} img/s steady, {shown}", flush=True)  # fmt: skip
            ray.train.report(metrics, checkpoint=ckpt_obj)
    if tracker is not None:
        tracker.close()


@torch.no_grad()
def _validate(module: TrainModule, shard, cfg: ExperimentConfig, info, device, autocast, world) -> dict[str, float]:
    """Probes on the val split (their training continues only on train pairs)."""
    module.eval()
    acc = ProbeMetrics(info["regress"], device)
    floor_acc = ProbeMetrics(info["regress"], device) if module.floor is not None else None
    per_worker = max(1, cfg.train.batch_size // max(1, world))
    for raw in shard.iter_torch_batches(batch_size=per_worker, drop_last=False):
        batch = to_model_batch(raw, info["mean"], info["std"], device, cfg.train.channels_last)
        with autocast:
            _, r1 = module.method.backbone(batch["view1"])
            _, r2 = module.method.backbone(batch["view2"])
            _, outputs = module.probes(r1, r2, batch)
            if floor_acc is not None:
                floor_acc.update(module.floor(batch)[1])
        acc.update(outputs)
    module.train()
    return {**acc.compute("val"), **(floor_acc.compute("val/floor") if floor_acc is not None else {})}


def _inject_failure(info, rank: int, epoch: int) -> None:
    """Test hook: this worker process dies once, a few seconds into epoch `fail_at` (after the
    previous epoch's checkpoint has reached the controller). A marker file makes it happen once."""
    marker = Path(info["run_dir"]) / ".fault_injected"
    if marker.exists():
        return
    marker.write_text(f"rank {rank} epoch {epoch + 1}\n")
    _write(f"[fault injection] worker {rank} dies in epoch {epoch + 1}")
    time.sleep(3)
    os._exit(1)


def _quiet_train_console() -> None:
    """Ray Train's worker logger writes every report (with all metrics) to the console at INFO; keep
    its console handler to warnings. Its log files are untouched."""
    for h in logging.getLogger("ray.train").handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(logging.WARNING)


def _write(*parts, flush: bool = True, **_) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    if flush:
        sys.stdout.flush()


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
