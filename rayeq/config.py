"""The one typed experiment config: validated on load, dotted overrides, YAML round trip.

Every section is a pydantic model that forbids unknown keys, so a typo such as
`loss.recon_wieght=0.5` fails before any work starts, naming the key and what is allowed.
Sweeps name the same dotted keys (`loss.recon_weight`, `augment.color.strength`).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rayeq.models.facts import BACKBONE_DIMS, STEM_STRIDES, token_width

# Keys that may change when a run is resumed: they do not change what is being trained.
OPERATIONAL_KEYS = (
    "train.epochs",
    "train.name",
    "train.storage_path",
    "train.log_every_steps",
    "train.val_every_epochs",
    "train.val_steps",
    "train.max_failures",
    "train.keep_checkpoints",
    "train.num_workers",
    "train.use_gpu",
    "train.cpus_per_worker",
    "train.gpus_per_worker",
    "train.worker_resources",
    "train.placement_strategy",
    "train.precision",
    "train.compile",
    "train.channels_last",
    "train.torch_threads",
    "data.path",
    "data.num_actors",
    "data.cpus_per_actor",
    "data.rows_per_batch",
    "data.stream_mb",
    "data.skip_corrupt",
    "data.decoded",
    "eval",
    "track",
)
# "<view>.<part>": the view's spatial tokens of that channel part; "<view>.<part>_pooled": the part's pooled
# vector (what the representation holds) at every position, plus a fixed 2D sin-cos position code
TokenSource = Literal[
    "target.inv",
    "target.equi",
    "target.full",
    "source.inv",
    "source.equi",
    "source.full",
    "target.inv_pooled",
    "target.equi_pooled",
    "target.full_pooled",
    "source.inv_pooled",
    "source.equi_pooled",
    "source.full_pooled",
]


class ConfigError(ValueError):
    """A config that cannot run; the message names the dotted key at fault."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- data
IMAGE_SOURCES = ("folder", "photos", "renders")  # one row per image (no 3D object, no views, no pose)


class DataConfig(Section):
    source: Literal["synth3d", "3diebench", "folder", "photos", "renders"] = Field(
        "synth3d",
        description="synth3d: built-in renders; 3diebench: converted 3DIEBench; folder: natural images (an image "
        "folder converted by `rayeq data folder --src ROOT --out DIR`); photos: the built-in natural-photo set "
        "(crops of the photos inside scikit-image and scikit-learn, built once into the cache; the `photos` extra); "
        "renders: synth3d renders as an image set (one row per view, split by object; 2D augmentations, top-1)",
    )
    path: str | None = Field(None, description="data directory (Parquet shards + meta.json); None = built-in cache")
    builtin: Literal["standard", "small", "tiny"] = Field(
        "standard",
        description="synth3d without a path: the standard built-in set (34,500 objects x 4 views, 64 px; "
        "rendered once, 2-3 minutes on 2 cores), the quickstart's small one (6,900 objects x 4 views, 64 px; "
        "about half a minute) or a tiny one (1,600 views, 32 px, for smoke tests)",
    )
    image_size: int = Field(64, ge=16, le=512, description="side of the square views fed to the encoder")
    rotation_target: Literal["sie", "canonical"] = Field(
        "sie", description="relative quaternion as in SIE (sign as computed) or with w >= 0"
    )
    color_target: Literal["sie", "cos_sin"] = Field(
        "sie", description="hue change as SIE's raw difference or as (cos, sin) of the angle"
    )
    skip_corrupt: bool = Field(False, description="skip and count unreadable images instead of failing")
    decoded: bool | None = Field(
        None,
        description="feed training from a copy of a 3D set with its views decoded once at data.image_size "
        "(raw uint8, lz4; a pair is then a slice, not two image decodes); None = on for the built-in sets only",
    )
    num_actors: int | None = Field(None, ge=1, description="Ray Data pair-maker actors; None = half the CPUs")
    cpus_per_actor: float = Field(0.5, gt=0.0, description="CPUs reserved by each pair-maker actor")
    rows_per_batch: int = Field(64, ge=1, description="stored rows per batch of pairs a pair maker makes and yields")
    stream_mb: int | None = Field(
        None,
        ge=16,
        description="Ray path: how far pairs may run ahead of training, as the training stream's Ray Data object-store "
        "budget in MB; None = 256 per pair-maker actor (Ray's own default, a share of the object store, lets a stream "
        "of many passes make GBs of pairs that a short run never uses, on the CPUs training needs)",
    )
    shuffle_rows: int | None = Field(
        None,
        ge=0,
        description="Ray path: pairs in each train worker's local shuffle buffer, which mixes blocks of "
        "different shards into a batch; None = 4 x the worker's batch (at least 256), 0 = off",
    )


# --------------------------------------------------------------------------- augmentation
class AugFamily(Section):
    enabled: bool = True
    strength: float = Field(1.0, ge=0.0, le=2.0, description="scales the family's ranges; 1 = the paper's")


class AugmentConfig(Section):
    """Per-family switches and strengths. Ranges at strength 1 follow arXiv 2503.18753."""

    crop: AugFamily = AugFamily()
    flip: AugFamily = AugFamily()
    color: AugFamily = AugFamily()
    grayscale: AugFamily = AugFamily(enabled=False)
    blur: AugFamily = AugFamily()
    rotation: AugFamily = AugFamily(enabled=False)
    translation: AugFamily = AugFamily(enabled=False)
    photometric_3d: bool = Field(False, description="apply colour/blur to 3D pairs too (SIE uses none)")

    def varies(self, family: str) -> bool:
        """Whether the pairs' views differ in this family's parameters (on, with a strength above 0)."""
        aug = getattr(self, family)
        return aug.enabled and aug.strength > 0


# --------------------------------------------------------------------------- model
class ModelConfig(Section):
    backbone: Literal["resnet18", "resnet50"] = "resnet18"
    stem: Literal["imagenet", "compact", "small"] = Field(
        "small",
        description="imagenet: 7x7/2 conv + max-pool (stride 32); compact: 3x3/2 conv (stride 16); "
        "small: 3x3/1 conv (stride 8), for 32-96 px images",
    )
    inv_dim: int = Field(256, ge=1, description="first inv_dim channels are invariant, the rest equivariant")
    projector: list[int] = Field([2048, 2048, 2048], min_length=1, description="projector MLP widths")
    zero_init_residual: bool = True

    @property
    def feature_dim(self) -> int:
        return BACKBONE_DIMS[self.backbone]

    @property
    def equi_dim(self) -> int:
        return self.feature_dim - self.inv_dim


# --------------------------------------------------------------------------- method
class XAttnConfig(Section):
    """The cross-attention that blends the two views' tokens before decoding."""

    query: TokenSource = Field(
        "target.equi_pooled",
        description="target.equi_pooled (default): the target's pooled equivariant vector + position code, so the "
        "target's spatial content must come from the other view; target.equi lets the decoder autoencode the target",
    )
    key: TokenSource = "source.inv"
    value: TokenSource = "source.inv"
    learned_projections: bool = Field(False, description="False = parameter-free softmax(QK^T/sqrt(d))V")
    attn_dim: int = Field(256, ge=8, description="width of learned projections (ignored when parameter-free)")
    heads: int = Field(1, ge=1, le=64)
    residual: bool = Field(True, description="add the queries to the attention output")
    target_code: int = Field(
        0,
        ge=0,
        le=4096,
        description="k > 0: the target's pooled equivariant vector, mapped to k dimensions (a learned linear map), "
        "scales and shifts the blended tokens (FiLM: x * (1 + gamma) + beta); with residual=false the target then "
        "reaches the decoder only through those k numbers, enough to steer pose and colour, too few to carry its "
        "content. 0 = off",
    )


class DecoderConfig(Section):
    width: int = Field(256, ge=8, le=4096, description="channels after the input 1x1 conv; halved per stage")
    depth: int = Field(1, ge=1, le=8, description="3x3 conv blocks per upsampling stage")
    recon_size: int = Field(32, ge=8, le=512, description="side of the reconstructed image")


class SIEConfig(Section):
    hypernetwork: Literal["linear", "deep"] = "linear"
    bias: bool = Field(False, description="bias in the hypernetwork (SIE: off)")


class SupervisedConfig(Section):
    hidden_dim: int = Field(1024, ge=1, description="width of the rotation and colour heads (as the eval probes)")


RECON_METHODS = ("xrecon", "between")  # the methods with a cross-attention and a decoder (methods/xrecon.py)
BETWEEN_DEFAULT = [1 / 3, 2 / 3]  # method.name=between's fractions t when method.intermediate is []


class MethodConfig(Section):
    name: Literal["vicreg", "simclr", "sie", "xrecon", "between", "supervised"] = Field(
        "xrecon",
        description="supervised: the ceiling, trained with the labels the probes ask for (not SSL); between: xrecon "
        "with design B (the follow-up's intermediate target, method.intermediate; [1/3, 2/3] when it is [])",
    )
    base: Literal["vicreg", "simclr"] = Field("vicreg", description="SSL loss of xrecon's invariant part")
    target_view: Literal[1, 2] = Field(1, description="xrecon: which view is reconstructed")
    symmetric: bool = Field(False, description="xrecon: reconstruct both views (average of the two losses)")
    intermediate: list[float] = Field(
        [],
        description="xrecon, design B (the follow-up, arXiv 2503.18753): rebuild no view but the image at a fraction "
        "t of the way from view 1's augmentation parameters to view 2's (each pair's t drawn from this list, values "
        "in (0, 1)); its code is (1 - t) x view 1's + t x view 2's pooled equivariant vector (the query, with the "
        "position code), its content view 1's invariant tokens (keys and values). Image data (2D augmentations) "
        "only. [] = off",
    )
    target_mask: float = Field(
        0.0,
        ge=0.0,
        le=0.95,
        description="xrecon: hide this fraction of the target view's pixels (cells of an 8 x 8 grid, set to 0, the "
        "normalised mean) before encoding it; the decoder still rebuilds the whole target (CroCo's masked "
        "cross-view completion). The encoder's features for probes and eval are of whole images. 0 = off",
    )
    xattn: XAttnConfig = XAttnConfig()

    decoder: DecoderConfig = DecoderConfig()
    sie: SIEConfig = SIEConfig()
    supervised: SupervisedConfig = SupervisedConfig()

    @property
    def between_ts(self) -> list[float]:
        """Design B's fractions t (the image rebuilt lies a fraction t of the way from view 1 to view 2), [] when the
        method rebuilds a view: method.intermediate for xrecon, and for between the same or [1/3, 2/3] when []."""
        if self.name == "between":
            return list(self.intermediate) or list(BETWEEN_DEFAULT)
        return list(self.intermediate) if self.name == "xrecon" else []


# --------------------------------------------------------------------------- loss
class LossConfig(Section):
    sim_weight: float = Field(25.0, ge=0.0, description="VICReg invariance weight (SIE: 10)")
    std_weight: float = Field(25.0, ge=0.0, description="VICReg variance weight (SIE: 10)")
    cov_weight: float = Field(1.0, ge=0.0, description="VICReg covariance weight")
    temperature: float = Field(0.1, gt=0.0, le=10.0, description="SimCLR NT-Xent temperature")
    equi_weight: float = Field(
        4.5,
        ge=0.0,
        description="SIE: weight of the equivariant prediction term (4.5: SIE's main.py default; its README trains "
        "with 0.45, configs/sie_*.yaml; docs/METHOD.md)",
    )
    recon_weight: float = Field(1.0, ge=0.0, le=100.0, description="xrecon: weight of the reconstruction loss")
    rotation_weight: float = Field(1.0, ge=0.0, description="supervised: relative-rotation MSE (3D: quaternion; "
                                   "images: the rotation augmentation's angle)")  # fmt: skip
    color_weight: float = Field(1.0, ge=0.0, description="supervised: colour-change MSE (3D: hues; images: jitter)")
    blur_weight: float = Field(1.0, ge=0.0, description="supervised, image data: relative blur sigma MSE")
    translation_weight: float = Field(1.0, ge=0.0, description="supervised, image data: relative shift MSE")
    class_weight: float = Field(1.0, ge=0.0, description="supervised: classification cross-entropy")
    pose_weight: float = Field(1.0, ge=0.0, description="supervised: each view's own rotation matrix, MSE")


# --------------------------------------------------------------------------- optimiser
class OptimConfig(Section):
    name: Literal["adamw", "adam", "lars"] = "adamw"
    lr: float = Field(1e-3, gt=0.0, le=10.0, description="learning rate at optim.base_batch_size")
    weight_decay: float = Field(1e-6, ge=0.0, le=1.0)
    base_batch_size: int = Field(256, ge=1, description="lr is scaled by global_batch / base_batch_size")
    scale_lr: bool = True
    warmup_epochs: float = Field(1.0, ge=0.0)
    grad_clip: float | None = Field(None, gt=0.0, description="max gradient norm; None = no clipping")


# --------------------------------------------------------------------------- training
class TrainConfig(Section):
    name: str = Field("rayeq", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$", description="experiment name")
    storage_path: str = Field("runs", description="runs live in storage_path/name")
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(256, ge=2, description="global batch (split across workers)")
    steps_per_epoch: int | None = Field(
        None, ge=1, description="cap on steps per epoch; None = one pass (one pair per train object)"
    )
    num_workers: int = Field(1, ge=0, description="Ray Train workers; 0 = run in the driver process")
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0.0)
    gpus_per_worker: float = Field(1.0, ge=0.0)
    worker_resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources each Train worker asks for besides CPU/GPU, e.g. {accelerator_type:L4: "
        "0.001} or a label that only some nodes carry; the nodes that offer them hold the workers",
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how Ray places the Train workers on nodes (SPREAD: over as many nodes as it can)"
    )

    @field_validator("worker_resources")
    @classmethod
    def _custom_resources(cls, v: dict[str, float]) -> dict[str, float]:
        for k, amount in v.items():
            if k in ("CPU", "GPU", "memory", "object_store_memory"):
                raise ValueError(f"{k!r} is set by train.cpus_per_worker / gpus_per_worker, not worker_resources")
            if not amount > 0:
                raise ValueError(f"resource {k!r}: amount {amount} must be > 0")
        return v

    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    channels_last: bool = True
    torch_threads: int | None = Field(None, ge=1, description="torch threads per worker; None = Ray's (its CPUs)")
    compile: bool = False
    sync_batchnorm: bool = True
    seed: int = Field(0, ge=0)
    max_failures: int = Field(0, ge=-1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every_steps: int = Field(10, ge=1)
    val_every_epochs: int = Field(1, ge=1, description="probe the val split every N epochs (and at the end)")
    val_steps: int | None = Field(
        None, ge=1, description="validate on the first N val batches of each worker (None = the whole val split)"
    )
    floor_probes: bool = Field(
        True,
        description="train the same online probes on a frozen copy of the untrained encoder too (train/floor/*, "
        "val/floor/*): the floor every online probe number is read against",
    )


# --------------------------------------------------------------------------- evaluation
class ProbeConfig(Section):
    """One frozen-feature probe's optimisation (SIE: Adam 1e-3, batch 256, 300 epochs)."""

    epochs: int = Field(300, ge=1, description="SIE protocol: 300 epochs")
    lr: float = Field(1e-3, gt=0.0, description="Adam learning rate")
    batch_size: int = Field(256, ge=1)
    seed: int = Field(0, ge=0)
    min_steps: int = Field(
        0, ge=0, description="run at least this many optimiser steps, whatever the data size (0 = epochs only)"
    )


class RegressionProbeConfig(ProbeConfig):
    hidden_dim: int = Field(1024, ge=1, description="width of the regression MLP 2d->h->h->out (SIE: 1024)")


class KnnConfig(Section):
    k: int = Field(20, ge=1)
    temperature: float = Field(0.07, gt=0.0)


class FastEvalConfig(Section):
    """`rayeq eval --fast`: caps that make every probe fit a CPU."""

    max_epochs: int = Field(30, ge=1)
    max_hidden_dim: int = Field(512, ge=1)
    min_steps: int = Field(1500, ge=0, description="but at least this many steps per probe")


class EvalConfig(Section):
    protocols: list[Literal["linear", "knn", "rotation", "color", "transforms"]] = [
        "linear",
        "knn",
        "rotation",
        "color",
    ]
    linear: ProbeConfig = ProbeConfig()
    knn: KnnConfig = KnnConfig()
    rotation: RegressionProbeConfig = RegressionProbeConfig()
    color: RegressionProbeConfig = RegressionProbeConfig()
    transforms: RegressionProbeConfig = RegressionProbeConfig()
    fast: FastEvalConfig = FastEvalConfig()
    pairs_per_object: int = Field(
        10,
        ge=1,
        description="3D: fixed view pairs per object on which the rotation and colour probes are scored "
        "(held-out objects, and train objects for the train-pair R²); training pairs are drawn afresh every "
        "epoch, one per train object, as in SIE's protocol",
    )
    views_per_object: int | None = Field(
        None, ge=2, description="3D: encode only the first N views of each object (None = all)"
    )
    parts: list[Literal["full", "inv", "equi"]] = Field(
        ["full", "inv", "equi"],
        min_length=1,
        description="which parts of the representation the probes read (each part costs its own probes)",
    )
    train_rows: int | None = Field(
        None,
        ge=2,
        description="fit the probes on the first N train rows only (objects of a 3D set; images of a folder for linear "
        "and kNN; "
        "None = all); every held-out row is still scored. A CPU-sized study's knob: features cost time per row",
    )
    feature_seed: int = Field(0, ge=0, description="seed of the view pairs (3D) and the transformations (images)")
    extract_batch_size: int = Field(256, ge=1)
    extractor: Literal["auto", "local", "ray"] = Field(
        "auto",
        description="feature extraction: local (this process, its GPU if any), ray (Ray Data actors on the "
        "cluster's GPUs, else CPUs), auto (ray when a cluster address is given, else local)",
    )
    extract_actors: int | None = Field(None, ge=1, description="Ray extraction actors; None = GPUs, else CPUs - 1")
    preset: Literal["rayeq", "sie"] = Field(
        "rayeq",
        description="the evaluation protocol: rayeq (its own) or sie (facebookresearch/SIE's eval scripts: raw probe "
        "inputs, BatchNorm in train mode while the probe's features are made, one view / pair per object, SIE's "
        "normalisation constants). Each item below left unset follows the preset; set, it overrides it",
    )
    probe_inputs: Literal["standardised", "raw"] | None = Field(
        None,
        description="probe inputs: standardised (train rows' mean 0 / std 1, dead features 0, clipped at 5 std; "
        "rayeq) or raw features (SIE); None = the preset's",
    )
    batchnorm: Literal["eval", "train"] | None = Field(
        None,
        description="the frozen encoder's BatchNorm while train features are made: eval (running statistics; rayeq) "
        "or train (each shuffled batch's own statistics, running statistics updated, then val features in eval mode "
        "with them, as SIE's scripts do with net.train()); None = the preset's",
    )
    sampling: Literal["rayeq", "sie"] | None = Field(
        None,
        description="3D probes' samples: rayeq (classification: every view a sample, every val view scored; pairs: "
        "eval.pairs_per_object fixed pairs per held-out object) or sie (one random view per train object per epoch "
        "and one per val object; one pair per held-out object); None = the preset's",
    )
    normalization: Literal["checkpoint", "sie"] | None = Field(
        None,
        description="input normalisation: checkpoint (the mean/std the encoder was trained with; rayeq computes them "
        "from each data set's images) or sie (SIE's fixed 3DIEBench constants); None = the preset's",
    )

    def protocol(self) -> dict[str, str]:
        """The evaluation protocol's items as they apply: each set item, else the preset's value."""
        preset = EVAL_PRESETS[self.preset]
        return {k: getattr(self, k) or preset[k] for k in preset}


# eval.preset -> its protocol items (EvalConfig.protocol); sie: facebookresearch/SIE's eval_*.py
EVAL_PRESETS = {
    "rayeq": {"probe_inputs": "standardised", "batchnorm": "eval", "sampling": "rayeq", "normalization": "checkpoint"},
    "sie": {"probe_inputs": "raw", "batchnorm": "train", "sampling": "sie", "normalization": "sie"},
}


# --------------------------------------------------------------------------- tracking
class TrackConfig(Section):
    backend: Literal["auto", "aim", "tensorboard", "none"] = Field(
        "auto", description="auto: aim where the Aim extra is installed, else tensorboard"
    )
    repo: str | None = Field(
        None,
        description="directory of the tracking store (Aim: the repo holding .aim, or aim://host:port; TensorBoard: the "
        "log dir); None = ./aim or ./tensorboard after the backend",
    )
    experiment: str | None = Field(
        None, description="experiment (Aim's; TensorBoard's top directory); None = train.name"
    )
    image_every_epochs: int = Field(1, ge=1)


# --------------------------------------------------------------------------- the whole tree
class ExperimentConfig(Section):
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig = MethodConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    track: TrackConfig = TrackConfig()

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        problems = list(_cross_field_problems(self))
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    # -- helpers -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def dump(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path

    def fingerprint(self, ignore: tuple[str, ...] = OPERATIONAL_KEYS) -> str:
        """Hash of the settings that define the model and its training. Keys in `ignore` say how and
        where a run executes (epochs to reach, logging, resources, tracking) and may change between a
        run and its resumption."""
        d = self.to_dict()
        for key in ignore:
            node, *path = key.split(".")
            parent = d
            for part in [node, *path][:-1]:
                parent = parent.get(part, {})
            parent.pop(([node, *path])[-1], None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# The families the supervised ceiling regresses on image data -> their loss weight keys (loss.<key>)
IMAGE_TARGET_WEIGHTS = {"rotation": "rotation_weight", "color": "color_weight", "blur": "blur_weight",
                        "translation": "translation_weight"}  # fmt: skip


def supervised_families(cfg: ExperimentConfig) -> dict[str, float]:
    """Image data: the augmentation families the supervised ceiling regresses (on, with a weight above 0) ->
    their weight."""
    weights = {fam: getattr(cfg.loss, key) for fam, key in IMAGE_TARGET_WEIGHTS.items()}
    return {fam: w for fam, w in weights.items() if cfg.augment.varies(fam) and w > 0}


def _cross_field_problems(cfg: ExperimentConfig):
    """Constraints between sections, each message naming the keys involved."""
    m, meth = cfg.model, cfg.method
    c = m.feature_dim
    needs_split = meth.name in ("sie", *RECON_METHODS)
    if needs_split and not 0 < m.inv_dim < c:
        yield (
            f"model.inv_dim={m.inv_dim} must lie in [1, {c - 1}] for method.name={meth.name!r}: "
            f"{m.backbone} has {c} channels, split into invariant and equivariant parts"
        )
    if cfg.data.decoded and cfg.data.source in IMAGE_SOURCES:
        yield (
            "data.decoded=true applies to 3D object sets (data.source=synth3d or 3diebench); an image folder's "
            "views are cropped from the full image each step, so there is no fixed-size view to store"
        )
    if meth.name == "sie" and cfg.data.source in IMAGE_SOURCES:
        yield (
            "method.name='sie' needs per-pair rotation targets, which only 3D sources give: "
            "set data.source to 'synth3d' or '3diebench'"
        )
    if meth.name == "supervised" and cfg.data.source in IMAGE_SOURCES and not supervised_families(cfg):
        yield (
            f"method.name='supervised' on image data (data.source={cfg.data.source!r}) regresses the relative "
            f"parameters of the augmentation families {list(IMAGE_TARGET_WEIGHTS)} that are on, each with its "
            "loss.<family>_weight; none is on with a weight above 0 "
            f"({', '.join(f'augment.{f}.enabled={getattr(cfg.augment, f).enabled}' for f in IMAGE_TARGET_WEIGHTS)}): "
            "switch one on, e.g. augment.rotation.enabled=true"
        )
    stride = STEM_STRIDES[m.stem]
    if cfg.data.image_size < stride:
        yield (
            f"data.image_size={cfg.data.image_size} is smaller than the total stride {stride} of "
            f"model.stem={m.stem!r}: use a larger image or model.stem='small'"
        )
    if meth.name in RECON_METHODS and 0 < m.inv_dim < c:
        yield from _xattn_problems(cfg)
    if cfg.train.batch_size % max(cfg.train.num_workers, 1):
        yield (
            f"train.batch_size={cfg.train.batch_size} must be divisible by train.num_workers={cfg.train.num_workers}"
        )


def _intermediate_problems(cfg: ExperimentConfig):
    meth, x = cfg.method, cfg.method.xattn
    bad = [t for t in meth.between_ts if not 0 < t < 1]
    if bad:
        yield f"method.intermediate={meth.intermediate}: every t must lie strictly between 0 and 1, not {bad}"
    if cfg.data.source == "3diebench":
        yield (
            "method.intermediate (design B) with data.source='3diebench': the image between two 3D views is the "
            "object rendered at the interpolated pose, and 3DIEBench's meshes are not in rayeq; use the built-in "
            "synth3d set (rendered exactly) or image data"
        )
    if cfg.data.source == "synth3d" and cfg.augment.photometric_3d:
        yield (
            "method.intermediate (design B) with augment.photometric_3d=true: the rendered image between the views "
            "would carry no jitter while the views do; set augment.photometric_3d=false"
        )
    default = XAttnConfig()
    changed = [
        f"method.xattn.{k}={getattr(x, k)!r}" for k in ("query", "key", "value") if getattr(x, k) != getattr(default, k)
    ]
    if changed:
        yield (
            f"method.intermediate fixes the blend (query: both views' interpolated pooled equivariant vectors; keys "
            f"and values: view 1's invariant tokens), so {', '.join(changed)} would be ignored: leave them at their "
            "defaults"
        )
    others = [k for k, on in (("method.symmetric", meth.symmetric), ("method.target_mask", meth.target_mask > 0),
                             ("method.xattn.target_code", x.target_code > 0)) if on]  # fmt: skip
    if others:
        yield f"method.intermediate (design B) rebuilds no view, so it does not combine with {', '.join(others)}"


def _xattn_problems(cfg: ExperimentConfig):
    x, m = cfg.method.xattn, cfg.model
    dq, dk, dv = (token_width(s, m) for s in (x.query, x.key, x.value))
    if not x.learned_projections:
        if dq != dk:
            yield (
                f"parameter-free attention needs equal query and key widths, but method.xattn.query="
                f"{x.query!r} has {dq} channels and method.xattn.key={x.key!r} has {dk} (model.inv_dim="
                f"{m.inv_dim}); set model.inv_dim={m.feature_dim // 2} or method.xattn.learned_projections=true"
            )
        if x.residual and dv != dq:
            yield (
                f"a residual needs the value width ({dv}, method.xattn.value={x.value!r}) to equal the "
                f"query width ({dq}); set method.xattn.residual=false or learned_projections=true"
            )
        for name, d in (("query", dq), ("value", dv)):
            if d % x.heads:
                yield f"method.xattn.heads={x.heads} must divide the {name} width {d}"
    elif x.attn_dim % x.heads:
        yield f"method.xattn.heads={x.heads} must divide method.xattn.attn_dim={x.attn_dim}"
    if cfg.method.between_ts:
        yield from _intermediate_problems(cfg)
    if cfg.method.target_mask > 0 and cfg.method.symmetric:
        yield (
            f"method.target_mask={cfg.method.target_mask} with method.symmetric=true would mask both views, the "
            "other view too: mask one target (symmetric=false) or set target_mask=0"
        )


# --------------------------------------------------------------------------- loading
def _format_validation_error(err: ValidationError, root: type[BaseModel] = ExperimentConfig) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parent_keys = _fields_at(root, e["loc"][:-1])
            bad = str(e["loc"][-1])
            hint = difflib.get_close_matches(bad, parent_keys, n=1)
            msg = f"unknown key {loc!r}"
            if hint:
                msg += f" (did you mean {'.'.join([*map(str, e['loc'][:-1]), hint[0]])!r}?)"
            msg += f"; allowed keys here: {', '.join(parent_keys)}"
        elif e["type"] == "value_error" and not e["loc"]:
            msg = str(e["msg"]).removeprefix("Value error, ")
        else:
            got = e.get("input")
            msg = f"{loc}: {e['msg']} (got {got!r})"
        lines.append(msg)
    return "invalid config:\n  " + "\n  ".join(lines)


def _fields_at(model: type[BaseModel], loc) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def parse_override(text: str) -> tuple[str, Any]:
    """'loss.recon_weight=0.5' -> ('loss.recon_weight', 0.5); values are parsed as YAML scalars/lists."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        node: dict[str, Any] = data
        model: type[BaseModel] | None = ExperimentConfig
        for i, part in enumerate(parts):
            allowed = list(model.model_fields) if model is not None else []
            if model is not None and part not in allowed:
                hint = difflib.get_close_matches(part, allowed, n=1)
                where = ".".join(parts[:i]) or "top level"
                msg = f"unknown key {key!r}: {part!r} is not a key of {where}"
                if hint:
                    msg += f" (did you mean {'.'.join([*parts[:i], hint[0]])!r}?)"
                raise ConfigError(msg + f"; allowed: {', '.join(allowed)}")
            if i == len(parts) - 1:
                node[part] = value
                break
            ann = model.model_fields[part].annotation
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if model is None:
                raise ConfigError(f"override {key!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"config key {'.'.join(parts[: i + 1])} must be a mapping")
            node = child
    return data


def upgrade_stored_config(d: dict[str, Any]) -> dict[str, Any]:
    """Run directories and checkpoints written before per-protocol eval settings hold one flat
    `eval` set: spread it over the probes so that those runs stay usable."""
    e = dict(d.get("eval", {}))
    if not any(k in e for k in ("epochs", "lr", "batch_size", "hidden_dim", "seed", "knn_k", "knn_temperature")):
        return d
    probe = {k: e.pop(k) for k in ("epochs", "lr", "batch_size", "seed") if k in e}
    hidden = {"hidden_dim": e.pop("hidden_dim")} if "hidden_dim" in e else {}
    knn = {k: e.pop(f"knn_{k}") for k in ("k", "temperature") if f"knn_{k}" in e}
    e.update(
        linear=probe, rotation={**probe, **hidden}, color={**probe, **hidden}, transforms={**probe, **hidden}, knn=knn
    )
    return {**d, "eval": e}


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load a YAML experiment config (None = the built-in defaults) and apply dotted overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
        data = loaded or {}
    merged = apply_overrides(copy.deepcopy(data), list(overrides))
    try:
        return from_dict(merged)
    except ConfigError as exc:
        if path is None:
            raise
        try:  # name the culprit: the file itself, or the overrides given with it
            from_dict(data)
        except ConfigError:
            raise ConfigError(f"config file {str(path)!r}: {exc}") from None
        raise ConfigError(f"the overrides given with config file {str(path)!r}: {exc}") from None
