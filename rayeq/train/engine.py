"""The training engine: one run's method and online probes, their optimisers, schedule and
precision, stepped in plain PyTorch (no Ray here).

The Ray worker (`train/loop.py`), `rayeq bench`'s plain loop and `rayeq demo` drive the same
`Engine`; the host supplies the batches, the device and, through `Hooks`, what happens around the
steps (console progress, the tracker, `metrics.jsonl`, a test's fault injection).

Two optimisers, not one with a probe parameter group: `optim.name` may be LARS or Adam and follows
the warmup + cosine schedule, while the probes always train with AdamW at a constant 1e-3 (the
floors and every earlier figure were measured so); a probe group inside LARS would get its trust
ratio and the method's schedule.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rayeq.config import ExperimentConfig
from rayeq.data.feed.pipeline import to_model_batch
from rayeq.methods import StepOutput, build_method
from rayeq.runinfo import RunInfo
from rayeq.train.optim import build_optimizer, build_scheduler
from rayeq.train.probes import FloorProbes, OnlineProbes, ProbeMetrics

PROBE_LR = 1e-3


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite: the run stops rather than train on garbage."""


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


class Hooks:
    """What a host runs around the engine's work; every method is a no-op unless overridden."""

    def on_restored(self, engine: Engine) -> None:
        """Right after a checkpoint was loaded."""

    def on_step(self, engine: Engine, n: int, out: StepOutput, terms: dict[str, float]) -> None:
        """After each log step `n` (1-based, `Engine.is_log_step`) of epoch `engine.epoch`; `terms`: step n's loss
        terms as floats (read back from the device only then, so that steps in between never wait on it)."""

    def on_epoch_end(self, engine: Engine, result: EpochResult) -> None:
        """After an epoch and its validation, before the checkpoint is reported."""


@dataclass
class EpochResult:
    metrics: dict[str, Any]  # train/* terms and probes, val/* (when validated), epoch, step, lr, throughput
    last: tuple[dict[str, torch.Tensor], StepOutput] | None  # the last batch and its output (for pictures)
    steps: int


def rank_batch_size(cfg: ExperimentConfig, world: int) -> int:
    """Each rank's share of train.batch_size (what its data shard's batches hold)."""
    return cfg.train.batch_size // world


class Engine:
    """`cfg` + `info` + `device` -> a trainable run. `world` ranks share the global batch;
    `steps_per_epoch` defaults to one pass over the rank's share of the training rows."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        info: RunInfo,
        device: torch.device | str = "cpu",
        world: int = 1,
        steps_per_epoch: int | None = None,
    ):
        self.cfg, self.info, self.device, self.world = cfg, info, torch.device(device), world
        on_gpu = self.device.type == "cuda"
        precision = cfg.train.precision if cfg.train.precision != "auto" else ("bf16" if on_gpu else "fp32")
        self.autocast = (
            torch.autocast(device_type=self.device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
        )
        module = build_module(cfg, info.num_classes, info.regress)
        if on_gpu and world > 1 and cfg.train.sync_batchnorm:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        if cfg.train.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module: TrainModule = module.to(self.device)
        self.train_module: nn.Module = self.module  # what steps run through: DDP / compiled, see `wrap`

        self.batch_size = rank_batch_size(cfg, world)
        self.val_batch_size = max(1, cfg.train.batch_size // max(1, world))
        if steps_per_epoch is None:
            steps_per_epoch = max(1, (info.n_train // world) // self.batch_size)
            if cfg.train.steps_per_epoch:  # a cap, the same on every rank (DDP needs equal step counts)
                steps_per_epoch = min(steps_per_epoch, cfg.train.steps_per_epoch)
        self.steps_per_epoch = steps_per_epoch
        self.optimizer = build_optimizer(list(self.module.method.parameters()), cfg)
        self.probe_optimizer = torch.optim.AdamW(
            self.module.probe_parameters(), lr=PROBE_LR, weight_decay=0.0, fused=on_gpu
        )
        self.scheduler = build_scheduler(self.optimizer, cfg, steps_per_epoch)
        self.scaler = torch.amp.GradScaler(enabled=False)  # bf16 needs no loss scaling; kept for the checkpoint
        self.epoch = 0  # epochs done
        self.step_count = 0  # optimiser steps done
        self.epoch_started: float | None = None  # when the current epoch's first batch arrived

    def wrap(self, prepare=None) -> None:
        """Run steps through `prepare(module)` (e.g. Ray Train's DDP `prepare_model`), compiled when
        `train.compile`; weights and state stay shared with `self.module`."""
        wrapped = prepare(self.module) if prepare is not None else self.module
        self.train_module = torch.compile(wrapped) if self.cfg.train.compile else wrapped

    def to_batch(self, raw: dict[str, Any]) -> dict[str, torch.Tensor]:
        """A batch of stored pairs (uint8 views) -> normalised tensors on the engine's device."""
        return to_model_batch(raw, self.info.mean, self.info.std, self.device, self.cfg.train.channels_last)

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[StepOutput, dict[str, Any]]:
        """One optimisation step of the method and its probes."""
        with self.autocast:
            out, probe_loss, probe_out = self.train_module(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.probe_optimizer.zero_grad(set_to_none=True)
        (out.total + probe_loss).backward()
        if self.cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.module.method.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.probe_optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        return out, probe_out

    def run_epoch(self, batches: Iterable[dict[str, Any]], hooks: Iterable[Hooks] = ()) -> EpochResult:
        """Up to `steps_per_epoch` steps over `batches` (stored pairs); the epoch's train metrics."""
        hooks = list(hooks)
        self.module.train()
        probes = ProbeMetrics(self.info.regress, self.device)
        floor = ProbeMetrics(self.info.regress, self.device) if self.module.floor is not None else None
        sums: dict[str, float] = {}
        n, last, t_epoch = 0, None, time.perf_counter()
        self.epoch_started = None  # steady-state throughput is timed from the first batch's arrival
        pending: list[tuple[int, torch.Tensor]] = []  # (step of the epoch, its stacked terms), still on the device
        for raw in batches:
            if n >= self.steps_per_epoch:
                break
            if self.epoch_started is None:
                self.epoch_started = time.perf_counter()
            batch = self.to_batch(raw)
            out, probe_out = self.step(batch)
            n += 1
            probes.update(probe_out)
            if floor is not None:
                floor.update(probe_out["floor"])
            pending.append((n, torch.stack([v.detach().float() for v in out.losses.values()])))
            last = (batch, out)
            if self.is_log_step(n):  # the only host sync of the loop: the terms read back every log step
                self._read_terms(pending, sums, hooks, out)
        if pending:
            self._read_terms(pending, sums, hooks, last[1])
        if n == 0:
            raise RuntimeError(
                f"a worker got no full batch of {self.batch_size} in epoch {self.epoch + 1}: {self.info.n_train} "
                f"training rows for train.batch_size={self.cfg.train.batch_size} on {self.world} workers"
            )
        t_end = time.perf_counter()
        images = 2 * self.cfg.train.batch_size  # two views per pair, all ranks
        metrics: dict[str, Any] = {f"train/{k}": v / n for k, v in sums.items()}
        metrics.update(probes.compute("train"))
        if floor is not None:
            metrics.update(floor.compute("train/floor"))
        self.epoch += 1
        metrics.update(
            {
                "epoch": self.epoch,
                "step": self.step_count,
                "lr": self.scheduler.get_last_lr()[0],
                # steady: n steps since the first batch's arrival (its wait left out); n - 1 here (until issue 27)
                # understated short epochs, by 8 % at 12 steps against 1.7 % at 60
                "images_per_sec": images * n / max(t_end - self.epoch_started, 1e-9),
                "epoch_images_per_sec": images * n / (t_end - t_epoch),  # incl. the pipeline's start
                "epoch_seconds": t_end - t_epoch,
            }
        )
        return EpochResult(metrics, last, n)

    def is_log_step(self, n: int) -> bool:
        """Every `train.log_every_steps` steps of an epoch, and its last step."""
        return n % self.cfg.train.log_every_steps == 0 or n == self.steps_per_epoch

    def _read_terms(self, pending: list, sums: dict[str, float], hooks: list, out: StepOutput) -> None:
        """Read the pending steps' loss terms back at once (one host sync), stop at the first non-finite
        one naming its step, add them to the epoch's sums and hand the latest to the hooks' `on_step`.
        `out`: the latest step's output (every step has the same loss terms, in the same order)."""
        names = list(out.losses)
        steps, values = [k for k, _ in pending], torch.stack([v for _, v in pending]).tolist()
        pending.clear()
        for k, row in zip(steps, values, strict=True):
            terms = dict(zip(names, row, strict=True))
            if not all(math.isfinite(v) for v in terms.values()):
                raise NonFiniteLossError(
                    f"non-finite loss at step {self.step_count - steps[-1] + k} (epoch {self.epoch + 1}, step {k} of "
                    "the epoch): "
                    + ", ".join(f"{name}={v}" for name, v in terms.items())
                    + "; lower optim.lr, set optim.grad_clip, or check the loss weights"
                )
            for name, v in terms.items():
                sums[name] = sums.get(name, 0.0) + v
        for h in hooks:
            h.on_step(self, steps[-1], out, terms)

    @torch.no_grad()
    def validate(self, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        """The probes on held-out pairs (val/*, val/floor/*); they keep training on train pairs only. No top-1 where
        the held-out classes are not training's (`RunInfo.classes_shared`)."""
        module = self.module
        module.eval()
        acc = ProbeMetrics(self.info.regress, self.device)
        floor_acc = ProbeMetrics(self.info.regress, self.device) if module.floor is not None else None
        method = module.method
        # method-specific held-out checks (xrecon's cross-view check), summed per pair; every rank holds
        # every name so that the all-reduce below matches across ranks
        sums = {k: torch.zeros((), device=self.device) for k in method.validation_term_names}
        n = 0
        for raw in batches:
            batch = self.to_batch(raw)
            with self.autocast:
                out1 = method.backbone(batch["view1"])
                out2 = method.backbone(batch["view2"])
                _, outputs = module.probes(out1[1], out2[1], batch)
                if floor_acc is not None:
                    floor_acc.update(module.floor(batch)[1])
                if sums:
                    for k, v in method.validation_terms(batch, out1, out2).items():
                        sums[k] += v.float() * len(batch["view1"])
            n += len(batch["view1"])
            acc.update(outputs)
        module.train()
        extra = {}
        if sums:
            keys = sorted(sums)
            t = torch.stack([sums[k] for k in keys] + [torch.tensor(float(n), device=self.device)])
            if self.world > 1:
                import torch.distributed as dist

                dist.all_reduce(t)
            extra = {f"val/{k}": float(v / t[-1].clamp_min(1)) for k, v in zip(keys, t[:-1], strict=True)}
        if "val/recon" in extra:  # each cross-view check over the error with the pair's own views: 1 = not used
            for k in [k for k in extra if k.startswith("val/recon_")]:
                extra[f"{k}_ratio"] = extra[k] / max(extra["val/recon"], 1e-12)
        probes = {**acc.compute("val"), **(floor_acc.compute("val/floor") if floor_acc is not None else {})}
        if not self.info.classes_shared:  # held-out classes training never saw (the photo set's photos): no top-1
            probes = {k: v for k, v in probes.items() if "top1" not in k}
        return {**probes, **extra}

    def state_dict(self) -> dict[str, Any]:
        """The training state a checkpoint holds (see `rayeq.checkpoint.TrainState`)."""
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "probe_optimizer": self.probe_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.probe_optimizer.load_state_dict(state["probe_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_count = state["epoch"], state["step"]
