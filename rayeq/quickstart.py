"""`rayeq quickstart`: the whole path on a laptop in minutes. Builds (or reuses) the small built-in synth3d set in
the cache directory, trains xrecon with 2 CPU workers on a local Ray instance, evaluates the frozen encoder
(linear top-1, relative rotation and colour R² on held-out objects) beside an untrained copy of it, the mean
predictor and chance, logs to a local Aim repo (TensorBoard without the aim extra) and prints how to look at it."""

from __future__ import annotations

import time

from rayeq.config import load_config
from rayeq.data.builtin import ensure_data
from rayeq.eval.measure import HEADLINES
from rayeq.report import FLOOR_MARK, highest_floor, mark, number

# Sized so that a fresh 2-core machine (rendering included) finishes in under 10 minutes and its closing table
# shows learning (docs/RESULTS.md, "The quickstart"): methods_cpu's protocol (ResNet-18 with the ImageNet stem at
# 64 px, 64 pairs a step) on the small built-in set.
OVERRIDES = [
    "data.source=synth3d",
    "data.builtin=small",
    "data.image_size=64",
    "data.cpus_per_actor=0.4",
    "data.num_actors=1",
    "model.stem=imagenet",
    "model.projector=[512,512]",
    "method.name=xrecon",
    "method.base=simclr",
    "loss.temperature=0.1",
    "method.decoder.width=64",
    "method.decoder.recon_size=32",
    "optim.lr=0.002",
    "optim.scale_lr=false",
    "optim.warmup_epochs=1",
    # 2 epochs of 60 steps of 64 pairs (a full pass over the 5,520 train objects would be 86 steps)
    "train.num_workers=2",
    "train.cpus_per_worker=0.5",
    "train.batch_size=64",
    "train.epochs=2",
    "train.steps_per_epoch=60",
    "train.val_every_epochs=2",
    "train.val_steps=20",
    "train.floor_probes=false",  # the closing evaluation measures the floors on every held-out object
    "train.log_every_steps=10",
    "train.keep_checkpoints=1",
    "track.image_every_epochs=1",
    # the closing evaluation: probes on frozen features of 2 views per object, fitted on the train objects
    "eval.protocols=[linear,rotation,color]",
    "eval.views_per_object=2",
    "eval.parts=[full]",
    "eval.fast.max_epochs=10",
    "eval.fast.min_steps=0",
]

# the closing table's rows: (metric, what it reads)
CLOSING_ROWS = [
    (HEADLINES["linear"], "linear top-1 (invariance)"),
    (HEADLINES["color"], "colour change R² (equivariance)"),
    (HEADLINES["rotation"], "relative rotation R² (equivariance)"),
]


def closing_table(result: dict) -> str:
    """The evaluation's headline figures beside their floors, with the margin over the higher floor (▼ when the
    encoder does not beat it)."""
    floors = result.get("floors", {})
    head = f"  {'held-out objects':37s} {'encoder':>8s} {'untrained':>9s} {'mean/chance':>11s} {'margin':>8s}"
    lines = ["closing evaluation (frozen encoder; floors: an untrained copy, the mean predictor or chance):", head]
    for key, title in CLOSING_ROWS:
        value = result["metrics"].get(key)
        if value is None:
            continue
        untrained = floors.get("random_init", {}).get(key)
        mean = floors.get("mean_predictor", {}).get(key)
        margin = value - highest_floor(untrained, mean)
        lines.append(
            f"  {title:37s} {value:8.4f} {number(untrained, width=9)} {number(mean, width=11)} {margin:+8.4f}"
            f"{mark(value, untrained, mean)}"
        )
    lines.append(f"  margin: the encoder over the higher floor; {FLOOR_MARK}: not above it")
    from rayeq.eval.output import result_protocol

    lines.append(f"  measured under {result_protocol(result)} (docs/RESULTS.md: comparing with published numbers)")
    return "\n".join(lines)


def run_quickstart(epochs: int | None = None, storage_path: str = "runs", track_repo: str | None = None, log=print):
    from rayeq.eval.output import write_outputs
    from rayeq.eval.run import evaluate
    from rayeq.train.driver import run_training
    from rayeq.train.summary import summary

    t0 = time.perf_counter()
    data = ensure_data(log, name="small")
    name = time.strftime("quickstart-%Y%m%d-%H%M%S")
    extra = [f"train.epochs={epochs}", f"train.val_every_epochs={epochs}"] if epochs else []
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
    log("evaluating the frozen encoder and an untrained copy of it on the held-out objects (rayeq eval --fast)")
    result = evaluate(res.run_dir, fast=True, log=log)
    path = write_outputs(result, None, overwrite=True)
    log(closing_table(result))
    log(f"  the whole evaluation: {path} and {path.with_suffix('.md')}")
    log(f"quickstart finished in {time.perf_counter() - t0:.0f}s; the resolved config is {res.run_dir / 'config.yaml'}")
    return res
