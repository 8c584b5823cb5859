"""The untrained-encoder floor of `rayeq eval`: the same protocols, pairs and settings on an untrained encoder of the
run's architecture (its config, `train.seed`), measured once per data set, architecture and eval settings and cached
in `$RAYEQ_CACHE/floors/` (`floor_dir`, one JSON per protocol keyed by `protocol_key`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rayeq.checkpoint import LoadedCheckpoint
from rayeq.config import EVAL_PRESETS, ExperimentConfig
from rayeq.eval.features import BN_WINDOW
from rayeq.eval.measure import PARTS, PER_CLASS_METRIC, measure, protocol_of
from rayeq.eval.protocols import DEAD, Z_CLIP, ProtocolSettings

FLOORS_VERSION = "floors-1"


def floor_dir(cfg: ExperimentConfig, data_dir: Path, norm) -> Path:
    """Where an untrained encoder's features and floors live: one folder per data set, architecture,
    seed, input size and normalisation (not the method: every method builds its backbone first)."""
    from rayeq.data.builtin import cache_dir

    blob = json.dumps(
        [
            FLOORS_VERSION,
            (data_dir / "meta.json").read_text(),
            str(data_dir.resolve()),
            cfg.model.model_dump(),
            cfg.data.image_size,
            cfg.train.seed,
            list(norm),
            cfg.eval.views_per_object,
            *([cfg.eval.train_rows] if cfg.eval.train_rows is not None else []),  # old floor folders still hit
        ],
        sort_keys=True,
        default=str,
    )
    return cache_dir() / "floors" / hashlib.sha256(blob.encode()).hexdigest()[:16]


def protocol_key(cfg: ExperimentConfig, protocol: str, settings: dict[str, ProtocolSettings]) -> str:
    """What one protocol's scores depend on besides the features: its settings (and the pairs)."""
    e = cfg.eval
    own = e.knn.model_dump() if protocol == "knn" else dict(settings[protocol].__dict__)
    for item in ("standardise", "sampling"):  # in e.protocol() below
        own.pop(item, None)
    blob = [protocol, own, e.pairs_per_object, e.feature_seed]
    if protocol != "knn":  # probe inputs clipped since issue 28: floors cached before it are not reused
        blob.append({"z_clip": Z_CLIP, "dead": DEAD})
    if list(e.parts) != list(PARTS):  # keys made before eval.parts existed (all parts) still hit
        blob.append(list(e.parts))
    if e.protocol() != EVAL_PRESETS["rayeq"]:  # keys made before eval.preset existed still hit
        blob.append(e.protocol())
    if e.protocol()["batchnorm"] == "train":  # the floor's features are made so too (eval/features.py)
        blob.append({"batchnorm_window": BN_WINDOW})
    blob = json.dumps(blob, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def random_init_floor(
    loaded: LoadedCheckpoint,
    data_dir: Path,
    meta: dict,
    wanted: list[str],
    settings: dict[str, ProtocolSettings],
    use_ray: bool,
    log,
) -> dict:
    """The same protocols on an untrained encoder of the run's architecture (its config, `train.seed`):
    {"metrics", "per_class"}. Each protocol's floor is measured once per data set and settings and
    cached in `$RAYEQ_CACHE/floors/`."""
    cfg = loaded.cfg
    norm = loaded.norm_stats(data_dir)
    where = floor_dir(cfg, data_dir, norm)
    files = {p: where / f"{p}-{protocol_key(cfg, p, settings)}.json" for p in wanted}
    floor: dict[str, dict] = {"metrics": {}, "per_class": {}}
    todo = [p for p in wanted if not files[p].is_file()]
    for p in wanted:
        if p not in todo:
            cached = json.loads(files[p].read_text())
            floor["metrics"].update(cached["metrics"])
            floor["per_class"].update(cached["per_class"])
    if not todo:
        log(f"  floor: untrained {cfg.model.backbone} (seed {cfg.train.seed}), cached in {where}")
        return floor
    log(
        f"  floor: evaluating an untrained {cfg.model.backbone} ({cfg.model.stem} stem, seed {cfg.train.seed}) "
        f"with the same protocols {todo} (once per data set and settings) ..."
    )
    where.mkdir(parents=True, exist_ok=True)
    untrained = LoadedCheckpoint.untrained(cfg, {**loaded.state.data, "mean": norm[0], "std": norm[1]}, where)
    scores = measure(untrained, data_dir, meta, todo, settings, use_ray, lambda msg: log(f"  (floor) {msg.strip()}"))
    for p in todo:
        mine = {k: v for k, v in scores["metrics"].items() if protocol_of(k) == p}
        per_class = scores["per_class"] if p == protocol_of(PER_CLASS_METRIC) else {}
        floor["metrics"].update(mine)
        floor["per_class"].update(per_class)
        tmp = files[p].with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "metrics": mine,
                    "per_class": per_class,
                    "backbone": cfg.model.backbone,
                    "stem": cfg.model.stem,
                    "seed": cfg.train.seed,
                },
                indent=2,
            )
            + "\n"
        )
        tmp.replace(files[p])
    return floor
