"""`rayeq eval`: frozen-encoder protocols on a run or checkpoint -> JSON, Markdown and Aim.

Every result stands beside its floors, measured with the same protocols, pairs and settings:
- `random_init`: an untrained encoder of the same architecture (the run's config, `train.seed`),
  evaluated once per data set, architecture and eval settings and cached in `$RAYEQ_CACHE/floors/`;
- `mean_predictor`: predicting the train targets' mean (R²) or the most frequent train class (top-1).
A metric at or below either floor is listed in `at_or_below_floor` and marked in every table.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from rayeq.checkpoint import LoadedCheckpoint, load_checkpoint
from rayeq.config import EVAL_PRESETS, ConfigError, ExperimentConfig, apply_overrides, from_dict
from rayeq.data.schema import DataError, is_objects, read_meta
from rayeq.eval.features import BN_WINDOW, Features, split_features
from rayeq.eval.protocols import DEAD, Z_CLIP, ProtocolSettings, knn_top1, linear_probe, majority_top1, pair_regression
from rayeq.methods import USES_LABELS, build_method, method_label
from rayeq.metrics import r2_global
from rayeq.models import feature_part

PROTOCOLS_3D = ("linear", "knn", "rotation", "color")
PROTOCOLS_IMAGES = ("linear", "knn", "transforms")
PARTS = ("full", "inv", "equi")
PROBES = ("linear", "rotation", "color", "transforms")  # the protocols that train a probe
# protocol -> (target, metric tag) pairs it scores
REGRESSIONS = {
    "rotation": (("rel_rotation", ""), ("rel_rotation_canonical", "_canonical")),
    "color": (("rel_color", ""), ("rel_color_cos_sin", "_cos_sin")),
}
PER_CLASS_METRIC = "rotation/full/r2"  # scored per class too: symmetric classes cap rotation R²
FLOOR_MARK = "▼"  # marks a metric at or below a floor in the tables
FLOORS_VERSION = "floors-1"


def settings_for(cfg: ExperimentConfig, fast: bool) -> dict[str, ProtocolSettings]:
    """Each probe's settings from `eval.<protocol>`; `--fast` applies the `eval.fast` caps."""
    e = cfg.eval
    return {p: ProtocolSettings.from_config(getattr(e, p), e.fast if fast else None, e.protocol()) for p in PROBES}


def with_eval_overrides(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Apply `eval.*` overrides to a checkpoint's config (the model's own keys cannot change)."""
    bad = [o for o in overrides if not o.split("=", 1)[0].startswith("eval.")]
    if bad:
        raise ConfigError(f"eval overrides must be eval.* keys (the encoder is fixed by its checkpoint): {bad}")
    return from_dict(apply_overrides(cfg.to_dict(), list(overrides))) if overrides else cfg


def use_ray_for(extractor: str, address: str | None) -> bool:
    import os

    if extractor == "auto":  # a cluster is there when the user names one (or `ray job submit` set it)
        return bool(address or os.environ.get("RAY_ADDRESS"))
    return extractor == "ray"


def evaluate(
    path: str | Path,
    data: str | Path | None = None,
    protocols: list[str] | None = None,
    fast: bool = False,
    which: str = "latest",
    overrides: list[str] = (),
    address: str | None = None,
    log=print,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    loaded = load_checkpoint(path, which)
    loaded.cfg = cfg = with_eval_overrides(loaded.cfg, list(overrides))
    if data is not None:
        data_dir = Path(data).expanduser()
    else:
        from rayeq.data.feed.pipeline import resolve_data_dir

        data_dir = resolve_data_dir(cfg)
    meta = read_meta(data_dir)
    three_d = is_objects(meta)
    # a set may narrow them (the photo set: its held-out photos are classes no training crop has, so no top-1)
    allowed = tuple(meta.get("protocols") or (PROTOCOLS_3D if three_d else PROTOCOLS_IMAGES))
    unknown = [p for p in protocols or [] if p not in PROTOCOLS_3D + PROTOCOLS_IMAGES]
    if unknown:
        raise ConfigError(f"unknown protocol(s) {unknown}; known: {sorted(set(PROTOCOLS_3D + PROTOCOLS_IMAGES))}")
    wanted = list(protocols or [p for p in cfg.eval.protocols if p in allowed] or allowed)
    bad = [p for p in wanted if p not in allowed]
    if bad:
        why = meta.get("split_from", "") if meta.get("protocols") else f"they need {'image' if three_d else '3D'} data"
        raise DataError(f"protocol(s) {bad}: {str(data_dir)!r} allows {list(allowed)} ({why})")
    settings = settings_for(cfg, fast)
    use_ray = use_ray_for(cfg.eval.extractor, address)
    if use_ray:
        from rayeq.cluster import connect_ray

        connect_ray(address, log)
    log(
        f"eval {loaded.path} ({method_label(cfg.method.name)}, epoch {loaded.state['epoch']}) on {data_dir}: "
        f"{wanted}{' (fast)' if fast else ''}, {protocol_label(cfg.eval.preset, cfg.eval.protocol())}"
    )
    scores = measure(loaded, data_dir, meta, wanted, settings, use_ray, log)
    random_init = random_init_floor(loaded, data_dir, meta, wanted, settings, use_ray, log)
    floors = {"random_init": random_init["metrics"], "mean_predictor": scores["mean_predictor"]}
    metrics = scores["metrics"]
    per_class = scores["per_class"]
    for name, row in per_class.items():
        row["random_init"] = random_init["per_class"].get(name, {}).get("value")
    result = {
        "checkpoint": str(loaded.path),
        "run_dir": str(loaded.run_dir),
        "run": loaded.run_dir.name,
        "method": cfg.method.name,
        "uses_labels": USES_LABELS.get(cfg.method.name),
        "epoch": loaded.state["epoch"],
        "data": str(data_dir),
        "protocols": wanted,
        "preset": cfg.eval.preset,
        "protocol": cfg.eval.protocol(),
        "fast": fast,
        "settings": {
            **{p: settings[p].__dict__ for p in PROBES if p in wanted},
            **({"knn": cfg.eval.knn.model_dump()} if "knn" in wanted else {}),
            "pairs_per_object": cfg.eval.pairs_per_object,
            "views_per_object": cfg.eval.views_per_object,
            "train_rows": cfg.eval.train_rows,
            "parts": list(cfg.eval.parts),
            "feature_seed": cfg.eval.feature_seed,
            "extractor": "ray" if use_ray else "local",
        },
        "r2_definitions": {
            "r2": "SIE: 1 - SS_res / SS_tot around one mean over all target entries, on held-out objects' pairs",
            "r2_per_dim": "per target dimension, then averaged (sklearn's uniform average), held-out pairs",
            "r2_train": "SIE's global R² on pairs of the train objects the probe was fitted on",
            "transforms/*/r2": "the transform protocol's headline: R² per parameter, then averaged (a mean "
            "predictor scores 0); transforms/*/r2_global: SIE's global R² of the same predictions",
        },
        "metrics": metrics,
        "floors": floors,
        "at_or_below_floor": at_or_below_floor(metrics, floors),
        "per_class": {"metric": PER_CLASS_METRIC, "classes": per_class} if per_class else {},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _log_to_tracker(loaded, metrics, floors, log)
    return result


def measure(
    loaded: LoadedCheckpoint,
    data_dir: Path,
    meta: dict,
    wanted: list[str],
    settings: dict[str, ProtocolSettings],
    use_ray: bool,
    log,
) -> dict[str, Any]:
    """Every wanted protocol on one encoder: {"metrics", "mean_predictor", "per_class"}."""
    cfg = loaded.cfg
    metrics: dict[str, float] = {}
    mean: dict[str, float] = {}
    per_class: dict[str, dict[str, Any]] = {}
    inv_dim = cfg.model.inv_dim
    classes = meta["classes"]
    knn, pairs, seed = cfg.eval.knn, cfg.eval.pairs_per_object, cfg.eval.feature_seed
    if any(p in wanted for p in PROTOCOLS_3D):
        tr, va = split_features(loaded, data_dir, use_ray, log)
        chance = majority_top1(tr.label, va.label)
        for name in cfg.eval.parts:
            xtr, xva = feature_part(tr.r, name, inv_dim), feature_part(va.r, name, inv_dim)
            if "linear" in wanted:
                res = linear_probe(xtr, tr.label, xva, va.label, len(classes), settings["linear"], tr.obj, va.obj)
                metrics[f"linear/{name}/top1"], mean[f"linear/{name}/top1"] = res["top1"], chance
                log(
                    f"  linear/{name}: top-1 {res['top1']:.4f} on {res['scored']} val views (train "
                    f"{res['train_top1']:.4f}; majority class {chance:.4f})"
                )
            if "knn" in wanted:
                metrics[f"knn/{name}/top1"] = knn_top1(
                    xtr, tr.label, xva, va.label, len(classes), knn.k, knn.temperature
                )
                mean[f"knn/{name}/top1"] = chance
                log(f"  knn/{name}: top-1 {metrics[f'knn/{name}/top1']:.4f}")
            for proto, targets in REGRESSIONS.items():
                if proto not in wanted or tr.latent is None:
                    continue
                for target, tag in targets:
                    res = pair_regression(
                        xtr, tr.obj, tr.latent, xva, va.obj, va.latent, target, settings[proto], pairs, seed
                    )
                    key = f"{proto}{tag}/{name}"
                    for k in ("r2", "r2_per_dim", "r2_train"):
                        metrics[f"{key}/{k}"], mean[f"{key}/{k}"] = res[k], res["mean"][k]
                    log(
                        f"  {key}: R² {res['r2']:.4f} held-out, {res['r2_train']:.4f} train pairs (SIE, global; a "
                        f"mean predictor scores {res['mean']['r2']:.4f}), {res['r2_per_dim']:.4f} per dim"
                    )
                    if f"{key}/r2" == PER_CLASS_METRIC:
                        per_class = _per_class(res, va, classes)
    if "transforms" in wanted:
        from rayeq.eval.transforms import transform_regression

        got, base = transform_regression(loaded, data_dir, settings["transforms"], log)
        metrics.update(got)
        mean.update(base)
    return {"metrics": metrics, "mean_predictor": mean, "per_class": per_class}


def _per_class(res: dict, va: Features, classes: list[str]) -> dict[str, dict[str, Any]]:
    """Held-out rotation R² (SIE, global) per class, beside what the train mean scores there."""
    labels = va.label[res["rows"]]
    out = {}
    for c, name in enumerate(classes):
        m = labels == c
        if int(m.sum()) < 2:
            continue
        y = res["target"][m]
        out[name] = {
            "value": r2_global(res["pred"][m], y),
            "pairs": int(m.sum()),
            "mean_predictor": r2_global(res["mean_value"].expand_as(y), y),
        }
    return out


def _protocol_of(metric: str) -> str:
    head = metric.split("/")[0]
    return head.removesuffix("_canonical").removesuffix("_cos_sin")


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
    torch.manual_seed(cfg.train.seed)
    method = build_method(cfg, loaded.num_classes)
    state = {
        "model": {f"method.{k}": v for k, v in method.state_dict().items()},
        "epoch": 0,
        "step": 0,
        "config": cfg.to_dict(),
        "data": {**loaded.state.get("data", {}), "mean": norm[0], "std": norm[1]},
    }
    where.mkdir(parents=True, exist_ok=True)
    untrained = LoadedCheckpoint(where, where, cfg, state)
    scores = measure(untrained, data_dir, meta, todo, settings, use_ray, lambda msg: log(f"  (floor) {msg.strip()}"))
    for p in todo:
        mine = {k: v for k, v in scores["metrics"].items() if _protocol_of(k) == p}
        per_class = scores["per_class"] if p == _protocol_of(PER_CLASS_METRIC) else {}
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


def protocol_label(preset: str, protocol: dict[str, str]) -> str:
    """The protocol a result was measured under, in words: the preset, and each item set against it."""
    own = EVAL_PRESETS[preset]
    changed = [f"eval.{k}={v}" for k, v in protocol.items() if v != own[k]]
    return f"eval.preset={preset}" + (f" with {', '.join(changed)}" if changed else "")


def result_protocol(result: dict[str, Any]) -> str:
    """`protocol_label` of a result JSON; results written before eval.preset existed were rayeq's protocol."""
    return protocol_label(result.get("preset", "rayeq"), result.get("protocol", EVAL_PRESETS["rayeq"]))


def floor_of(key: str, floors: dict[str, dict[str, float]]) -> float | None:
    """The highest floor a metric has (random init or mean predictor), None when it has none."""
    values = [f[key] for f in floors.values() if key in f]
    return max(values) if values else None


def at_or_below_floor(metrics: dict[str, float], floors: dict[str, dict[str, float]]) -> list[str]:
    return [k for k, v in metrics.items() if (f := floor_of(k, floors)) is not None and v <= f]


def _single_floor_set(results: list[dict[str, Any]]) -> bool:
    return all(r.get("floors") == results[0].get("floors") for r in results)


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One column per run, then the floors (one set when the runs share them, else one per run);
    a metric at or below a floor is marked. The supervised ceiling and SIE are labelled as using labels."""
    keys = sorted({k for r in results for k in r["metrics"]})
    shared = _single_floor_set(results)
    floor_cols: list[tuple[str, dict[str, float]]] = []
    for i, r in enumerate(results):
        if shared and i > 0:
            break
        suffix = "" if shared else f" ({r['run']})"
        for name, title in (("random_init", "untrained encoder"), ("mean_predictor", "mean predictor")):
            floor_cols.append((title + suffix, r.get("floors", {}).get(name, {})))
    head = [
        "metric",
        *(f"{r['run']} ({method_label(r['method'])}, ep {r['epoch']})" for r in results),
        *(t for t, _ in floor_cols),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for k in keys:
        vals = []
        for r in results:
            v = r["metrics"].get(k)
            mark = f" {FLOOR_MARK}" if k in r.get("at_or_below_floor", []) else ""
            vals.append("" if v is None else f"{v:.4f}{mark}")
        vals += ["" if k not in f else f"{f[k]:.4f}" for _, f in floor_cols]
        lines.append(f"| {k} | " + " | ".join(vals) + " |")
    lines.append("")
    labels = sorted({result_protocol(r) for r in results})
    lines.append(f"Measured under {' / '.join(labels)} (docs/RESULTS.md, comparing with published numbers).")
    lines.append(
        f"{FLOOR_MARK}: at or below a floor (the untrained encoder of the same architecture, or the mean "
        "predictor / majority class). R²: `r2` SIE's global definition on held-out objects, `r2_per_dim` "
        "per dimension, `r2_train` on the train objects' pairs."
    )
    for r in results:
        pc = r.get("per_class", {})
        if pc.get("classes"):
            lines += [
                "",
                f"{pc['metric']} per class, {r['run']} ({method_label(r['method'])}):",
                "",
                "| class | value | untrained encoder | mean predictor | pairs |",
                "| --- | --- | --- | --- | --- |",
            ]
            for name, row in sorted(pc["classes"].items(), key=lambda kv: -kv[1]["value"]):
                ri = row.get("random_init")
                floor = max(x for x in (ri, row["mean_predictor"]) if x is not None)
                mark = f" {FLOOR_MARK}" if row["value"] <= floor else ""
                lines.append(
                    f"| {name} | {row['value']:.4f}{mark} | {'' if ri is None else f'{ri:.4f}'} | "
                    f"{row['mean_predictor']:.4f} | {row['pairs']} |"
                )
    return "\n".join(lines)


def _log_to_tracker(loaded: LoadedCheckpoint, metrics: dict[str, float], floors: dict[str, dict[str, float]], log):
    cfg = loaded.cfg
    run_id = loaded.state.get("tracker_run_id")
    backend = loaded.state.get("track_backend") or "aim"  # the tracker the run was trained with
    if cfg.track.backend == "none" or not run_id:
        return
    tool = {"aim": "Aim", "tensorboard": "TensorBoard"}.get(backend, backend)
    try:
        from rayeq.track import open_tracker, resolve_track_repo

        # the repo the run was trained with (a relative track.repo resolved where training ran)
        repo = loaded.state.get("track_repo") or resolve_track_repo(cfg)
        tracker = open_tracker(backend, repo, cfg.track.experiment or cfg.train.name, run_id, must_exist=True)
        values = {f"eval/{k}": v for k, v in metrics.items()}
        for name, floor in floors.items():
            values.update({f"eval_floor/{name}/{k}": v for k, v in floor.items()})
        tracker.log_metrics(values, step=loaded.state["step"], epoch=loaded.state["epoch"], subset="eval")
        tracker.close()
        log(f"  logged to {tool} run {run_id}")
    except Exception as exc:  # the results are in the JSON either way
        log(f"  (could not log to {tool}: {exc})")


def write_outputs(result: dict[str, Any], out: str | Path | None, overwrite: bool) -> Path:
    """JSON (+ Markdown beside it). Default: <checkpoint>/eval/results[-fast].json, replaced on
    re-evaluation; an explicit --out that exists is only replaced with --overwrite."""
    if out is None:
        name = "results-fast.json" if result["fast"] else "results.json"
        path = Path(result["checkpoint"]) / "eval" / name
    else:
        path = Path(out)
        if path.exists() and not overwrite:
            raise DataError(f"{str(path)!r} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown_table([result]) + "\n")
    return path
