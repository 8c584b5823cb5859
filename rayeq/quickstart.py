"""`rayeq quickstart`: the whole path on a laptop in a few minutes. Builds (or reuses) a small
synth3d set in a cache directory, trains xrecon with 2 CPU workers on a local Ray instance, reports
the online probes, logs to a local Aim repo (TensorBoard without the aim extra) and prints how to look at it."""

from __future__ import annotations

import time

from rayeq.config import load_config
from rayeq.data.builtin import ensure_data

OVERRIDES = [
    # 32 px views of the 64 px built-in set (the pipeline resizes): fast enough for 2 CPU cores
    "data.source=synth3d",
    "data.image_size=32",
    "data.cpus_per_actor=0.4",
    "data.num_actors=1",
    "model.stem=compact",
    "model.projector=[512,512]",
    "method.name=xrecon",
    "method.decoder.width=64",
    "method.decoder.recon_size=32",
    "loss.sim_weight=10",
    "loss.std_weight=10",
    "loss.cov_weight=1",
    "optim.lr=0.002",
    "optim.scale_lr=false",
    "optim.warmup_epochs=1",
    # 4 short epochs of 36 steps (a full pass over the 27,600 train objects would be 431 steps)
    "train.num_workers=2",
    "train.cpus_per_worker=0.5",
    "train.batch_size=64",
    "train.epochs=4",
    "train.steps_per_epoch=36",
    "train.val_every_epochs=4",
    "train.log_every_steps=6",
    "train.keep_checkpoints=2",
    "track.image_every_epochs=2",
]


def run_quickstart(epochs: int | None = None, storage_path: str = "runs", track_repo: str | None = None, log=print):
    from rayeq.train.driver import run_training, summary

    t0 = time.perf_counter()
    data = ensure_data(log)
    name = time.strftime("quickstart-%Y%m%d-%H%M%S")
    extra = [f"train.epochs={epochs}"] if epochs else []
    cfg = load_config(
        None,
        [
            *OVERRIDES,
            f"data.path={data}",
            f"train.name={name}",
            f"train.storage_path={storage_path}",
            *([f"track.repo={track_repo}"] if track_repo else []),  # else ./aim, or ./tensorboard without Aim
            *extra,
        ],
    )
    res = run_training(cfg, log=log)
    log(summary(res, cfg))
    log(f"quickstart finished in {time.perf_counter() - t0:.0f}s; the resolved config is {res.run_dir / 'config.yaml'}")
    return res
