"""What `rayeq eval` measures on one encoder: every wanted protocol (linear and kNN top-1, the pair regressions of
relative rotation and colour, the natural-image transforms) on its frozen features, with what a mean predictor or
the majority class scores on the same rows. Each metric's name is made here, beside the code that scores it:
`<protocol>[<target tag>]/<feature part>/<score>` (`rotation/full/r2`, `linear/equi/top1`), and
`transforms/<family>/r2` in `eval/transforms.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rayeq.checkpoint import LoadedCheckpoint
from rayeq.config import ExperimentConfig
from rayeq.eval.features import Features, split_features
from rayeq.eval.protocols import ProtocolSettings, knn_top1, linear_probe, majority_top1, pair_regression
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


def metric_name(protocol: str, part: str = "full", score: str = "r2") -> str:
    """A metric's name as `measure` writes it: `rotation/full/r2`, `linear/equi/top1`, `color_cos_sin/full/r2`."""
    return f"{protocol}/{part}/{score}"


# the headline figure of each 3D protocol on the whole representation
HEADLINES = {
    "rotation": metric_name("rotation"),
    "color": metric_name("color"),
    "linear": metric_name("linear", score="top1"),
}
PER_CLASS_METRIC = HEADLINES["rotation"]  # scored per class too: symmetric classes cap rotation R²


def settings_for(cfg: ExperimentConfig, fast: bool) -> dict[str, ProtocolSettings]:
    """Each probe's settings from `eval.<protocol>`; `--fast` applies the `eval.fast` caps."""
    e = cfg.eval
    return {p: ProtocolSettings.from_config(getattr(e, p), e.fast if fast else None, e.protocol()) for p in PROBES}


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
                top1 = metric_name("linear", name, "top1")
                metrics[top1], mean[top1] = res["top1"], chance
                log(
                    f"  linear/{name}: top-1 {res['top1']:.4f} on {res['scored']} val views (train "
                    f"{res['train_top1']:.4f}; majority class {chance:.4f})"
                )
            if "knn" in wanted:
                top1 = metric_name("knn", name, "top1")
                metrics[top1] = knn_top1(xtr, tr.label, xva, va.label, len(classes), knn.k, knn.temperature)
                mean[top1] = chance
                log(f"  knn/{name}: top-1 {metrics[top1]:.4f}")
            for proto, targets in REGRESSIONS.items():
                if proto not in wanted or tr.latent is None:
                    continue
                for target, tag in targets:
                    res = pair_regression(
                        xtr, tr.obj, tr.latent, xva, va.obj, va.latent, target, settings[proto], pairs, seed
                    )
                    key = f"{proto}{tag}/{name}"
                    for k in ("r2", "r2_per_dim", "r2_train"):
                        m = metric_name(f"{proto}{tag}", name, k)
                        metrics[m], mean[m] = res[k], res["mean"][k]
                    log(
                        f"  {key}: R² {res['r2']:.4f} held-out, {res['r2_train']:.4f} train pairs (SIE, global; a "
                        f"mean predictor scores {res['mean']['r2']:.4f}), {res['r2_per_dim']:.4f} per dim"
                    )
                    if metric_name(f"{proto}{tag}", name) == PER_CLASS_METRIC:
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


def protocol_of(metric: str) -> str:
    """The protocol that scores a metric (`rotation_canonical/full/r2` -> `rotation`)."""
    head = metric.split("/")[0]
    return head.removesuffix("_canonical").removesuffix("_cos_sin")
