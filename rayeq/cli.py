"""`rayeq` command line: thin wrappers around the library."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rayeq import __version__
from rayeq.config import ConfigError, load_config
from rayeq.data.schema import DataError

DEMO_DEFAULTS = ["data.image_size=32", "model.stem=compact", "model.projector=[256,256]"]


def _add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("config", nargs="?" if not required else None, help="experiment YAML (default: built-in)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. loss.recon_weight=0.5")


def _split_config_and_overrides(args) -> tuple[str | None, list[str]]:
    # `rayeq demo method.name=sie` has no config file: a first positional with '=' is an override.
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)
        config = None
    return config, overrides


def _add_tune_args(p: argparse.ArgumentParser, kind: str, unit: str, kept: str, example: str) -> None:
    """What `rayeq sweep` and `rayeq study` both take: they run Tune trials of the train path on a cluster."""
    p.add_argument("--resume", action="store_true", help=f"continue an interrupted {kind}; {kept}")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster (default: $RAY_ADDRESS, e.g. under `ray job submit`, or a local instance)",
    )
    p.add_argument(
        "--storage-path",
        default=None,
        help=f"where {kind} directories go (overrides the {kind} file's storage_path; use an absolute or shared "
        "path under `ray job submit`)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a base config key for every {unit}, e.g. {example} (repeatable)",
    )
    p.add_argument(
        "--autoscaling",
        action="store_true",
        help=f"the cluster adds nodes on demand: skip the check that a node can hold a {unit}; run max_concurrent "
        f"(else all) {unit}s at once",
    )


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show Ray's own output on the console: its start-up lines, every worker's output, Tune's status "
        "tables (by default they go to Ray's log files only)",
    )


def _tune_kwargs(args) -> dict:
    return dict(
        resume=args.resume,
        address=args.address,
        storage_path=args.storage_path,
        overrides=args.set,
        autoscaling=args.autoscaling,
    )


def cmd_config(args) -> int:
    config, overrides = _split_config_and_overrides(args)
    cfg = load_config(config, overrides)
    if args.action == "show":
        sys.stdout.write(cfg.to_yaml())
    else:
        print(f"config OK (fingerprint {cfg.fingerprint()}): method={cfg.method.name} data={cfg.data.source}")
    return 0


def cmd_demo(args) -> int:
    from rayeq.demo import run_demo

    config, overrides = _split_config_and_overrides(args)
    cfg = load_config(config, (DEMO_DEFAULTS if config is None else []) + overrides)
    run_demo(cfg, steps=args.steps, batch=args.batch)
    return 0


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: must be at least 1")
    return n


def cmd_data(args) -> int:
    if args.data_command == "synth3d":
        from rayeq.data.make.synth3d import check_args, generate

        kw = dict(classes=args.classes, objects_per_class=args.objects_per_class, views=args.views, size=args.size,
                  workers=args.workers, overwrite=args.overwrite, renderer=args.renderer, device=args.device,
                  use_ray=args.ray)  # fmt: skip
        if args.ray:
            from rayeq.cluster import connect_ray

            check_args(args.out, **kw)  # refused before Ray starts
            connect_ray(args.address)
        generate(args.out, seed=args.seed, **kw)
    elif args.data_command == "3diebench":
        from rayeq.data.make.convert import convert_3diebench

        convert_3diebench(args.src, args.out, args.train_list, args.val_list, overwrite=args.overwrite)
    elif args.data_command == "folder":
        from rayeq.data.make.convert import convert_folder

        convert_folder(args.src, args.out, overwrite=args.overwrite, val_fraction=args.val_fraction)
    elif args.data_command == "photos":
        from rayeq.data.make.photos import build_photos

        build_photos(args.out, args.size, args.train_crops, args.val_crops, seed=args.seed, overwrite=args.overwrite)
    elif args.data_command == "renders":
        from rayeq.data.make.renders import build_renders

        build_renders(args.out, args.classes, args.objects_per_class, args.views, args.size, seed=args.seed,
                      overwrite=args.overwrite)  # fmt: skip
    elif args.data_command == "preview":
        from rayeq.data.make.preview import contact_sheet

        path = contact_sheet(args.dir, args.out, rows=args.rows, cols=args.cols)
        print(f"wrote {path}")
    return 0


def cmd_train(args) -> int:
    from rayeq.train.driver import run_training
    from rayeq.train.summary import failure_message, summary

    config, overrides = _split_config_and_overrides(args)
    cfg = load_config(config, overrides)
    from ray.train import TrainingFailedError

    try:
        res = run_training(cfg, address=args.address, force=args.force, autoscaling=args.autoscaling)
    except TrainingFailedError as exc:
        print(f"rayeq: {failure_message(cfg, exc)}", file=sys.stderr)
        return 1
    print(summary(res, cfg))
    return 0


def cmd_quickstart(args) -> int:
    from rayeq.quickstart import run_quickstart

    run_quickstart(epochs=args.epochs, storage_path=args.runs, track_repo=args.track_repo)
    return 0


def cmd_eval(args) -> int:
    from rayeq.eval.output import markdown_table, write_outputs
    from rayeq.eval.run import evaluate

    paths = args.compare if args.compare else [args.path]
    if not paths or paths == [None]:
        raise ConfigError("rayeq eval needs a run directory or checkpoint (or --compare RUN RUN ...)")
    if args.cross_view_grid:
        from rayeq.eval.crossview import write_cross_view_grid

        write_cross_view_grid(paths[0], args.cross_view_grid, overwrite=args.overwrite)
        return 0
    protocols = args.protocols.split(",") if args.protocols else None
    if args.out and not args.compare and Path(args.out).exists() and not args.overwrite:
        raise DataError(f"{args.out!r} exists; pass --overwrite to replace it")  # refused before the work
    if args.protocol_items:
        from rayeq.eval import presets

        if args.compare:
            raise ConfigError("--protocol-items takes one run (not --compare)")
        out = presets.compare_protocols(
            paths[0], args.set, data=args.data, protocols=protocols, fast=args.fast, which=args.checkpoint,
            address=args.address,
        )  # fmt: skip
        path = presets.write(out, args.out, args.overwrite)
        print(f"wrote {path} and {path.with_suffix('.md')}\n\n{presets.markdown(out)}")
        return 0
    results = []
    for p in paths:
        res = evaluate(
            p,
            data=args.data,
            protocols=protocols,
            fast=args.fast,
            which=args.checkpoint,
            overrides=args.set,
            address=args.address,
        )
        path = write_outputs(res, args.out if not args.compare else None, args.overwrite)
        print(f"wrote {path} and {path.with_suffix('.md')}")
        results.append(res)
    print()
    print(markdown_table(results))
    return 0


def cmd_sweep(args) -> int:
    from rayeq.sweep.run import run_sweep

    out = run_sweep(args.sweep, **_tune_kwargs(args))
    print(f"sweep finished in {out['seconds']:.0f}s; results in {out['sweep_dir']}")
    return 130 if out["interrupted"] else 0


def cmd_study(args) -> int:
    from rayeq.study.run import run_study

    out = run_study(args.study, **_tune_kwargs(args), summary_only=args.summary_only)
    print(f"study ran {out['seconds']:.0f}s; results in {out['study_dir']}")
    if not out["complete"]:
        print("some runs have no result (see above); run the same command with --resume to finish them")
    return 0 if out["complete"] else 1


def cmd_bench(args) -> int:
    from rayeq import bench

    bench.check_out(args.out, args.overwrite)
    if args.bench_command == "throughput":
        bench.bench_throughput(
            args.method,
            args.size or 32,
            args.batch or 32,
            args.steps,
            args.repeats,
            args.threads,
            args.skip_ray,
            args.out,
            data_cpus=args.data_cpus,
            device=args.device,
            compile=args.compile,
            overrides=args.overrides,
            epochs=args.epochs,
            val_steps=args.val_steps,
        )
    else:
        bench.check_out(args.sheet, args.overwrite)
        bench.bench_data(args.size or 64, args.batch or 256, args.seconds, args.out, feed=args.feed,
                         sheet=args.sheet, render_only=args.render_only)  # fmt: skip
    return 0


def _add_data_parser(sub) -> None:
    p = sub.add_parser("data", help="make, convert and preview data sets")
    dsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    s = dsub.add_parser("synth3d", help="render a 3DIEBench-style data set (CPU or GPU, offline)")
    s.add_argument("--out", required=True, help="output directory (must be empty or new)")
    s.add_argument("--classes", type=int, default=20, help="number of procedural classes (max 23)")
    s.add_argument("--objects-per-class", type=int, default=50)
    s.add_argument("--views", type=int, default=20, help="views per object")
    s.add_argument("--size", type=int, default=64, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=None, help="render processes on a CPU (default: all CPUs)")
    s.add_argument("--device", default="cpu", help="cpu, or cuda[:N] to render on a GPU (torch renderer)")
    s.add_argument("--renderer", default="torch", choices=["torch", "pybullet"],
                   help="torch (default), or pybullet: the reference, an optional extra, CPU only")  # fmt: skip
    s.add_argument("--ray", action="store_true", help="render with Ray Data actors (one per GPU with --device cuda)")
    s.add_argument(
        "--address", default=None, help="with --ray: the Ray cluster to join (default: $RAY_ADDRESS or local)"
    )
    s.add_argument("--overwrite", action="store_true", help="replace a previous data set in --out")
    s = dsub.add_parser("3diebench", help="convert the official 3DIEBench layout (SYNSET/OBJ_ID/image_i.jpg)")
    s.add_argument("--src", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--train-list", default=None, help="SIE's train_images.npy (object paths)")
    s.add_argument("--val-list", default=None, help="SIE's val_images.npy")
    s.add_argument("--overwrite", action="store_true")
    s = dsub.add_parser("folder", help="convert an image-folder tree (ROOT/CLASS/IMAGE, ImageNet layout)")
    s.add_argument("--src", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--val-fraction", type=float, default=0.2, help="used when ROOT has no train/ and val/")
    s.add_argument("--overwrite", action="store_true")
    from rayeq.data.builtin import PHOTOS_DATA

    s = dsub.add_parser(
        "photos",
        help="the natural-photo set (data.source=photos) into --out: crops of the colour photos inside scikit-image "
        "and scikit-learn, split by photo (without data.path it is built once into the cache with these defaults)",
    )
    s.add_argument("--out", required=True)
    s.add_argument("--size", type=_positive_int, default=PHOTOS_DATA["size"], help="crop side in pixels")
    s.add_argument("--train-crops", type=_positive_int, default=PHOTOS_DATA["train_crops"],
                   help="crops per training photo")  # fmt: skip
    s.add_argument("--val-crops", type=_positive_int, default=PHOTOS_DATA["val_crops"],
                   help="crops per held-out photo")  # fmt: skip
    s.add_argument("--seed", type=int, default=PHOTOS_DATA["seed"])
    s.add_argument("--overwrite", action="store_true", help="replace a previous data set in --out")
    from rayeq.data.builtin import RENDERS_DATA

    s = dsub.add_parser(
        "renders",
        help="synth3d renders as an image set (data.source=renders) into --out: every view a row with its object's "
        "class, split by object (without data.path it is rendered once into the cache with these defaults)",
    )
    s.add_argument("--out", required=True)
    s.add_argument("--classes", type=_positive_int, default=RENDERS_DATA["classes"])
    s.add_argument("--objects-per-class", type=_positive_int, default=RENDERS_DATA["objects_per_class"])
    s.add_argument("--views", type=int, default=RENDERS_DATA["views"], help="poses (images) per object")
    s.add_argument("--size", type=_positive_int, default=RENDERS_DATA["size"])
    s.add_argument("--seed", type=int, default=RENDERS_DATA["seed"])
    s.add_argument("--overwrite", action="store_true", help="replace a previous data set in --out")
    s = dsub.add_parser("preview", help="contact sheet PNG of a data set")
    s.add_argument("dir")
    s.add_argument("--out", default="preview.png")
    s.add_argument("--rows", type=int, default=10)
    s.add_argument("--cols", type=int, default=8)
    p.set_defaults(func=cmd_data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayeq",
        description="Equivariant self-supervised learning (cross-attention reconstruction, VICReg, SimCLR, SIE) "
        "with Ray.",
    )
    parser.add_argument("--version", action="version", version=f"rayeq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="a few in-process steps of a method on a tiny generated batch")
    _add_config_args(p)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.set_defaults(func=cmd_demo)

    _add_data_parser(sub)

    p = sub.add_parser("quickstart", help="build the built-in data set and train xrecon on local Ray (minutes)")
    p.add_argument("--epochs", type=int, default=None, help="override the quickstart's epoch count")
    p.add_argument("--runs", default="runs", help="where run directories go")
    p.add_argument("--track-repo", "--aim-repo", default=None,
                   help="the tracking store (default: ./aim with Aim installed, else ./tensorboard)")  # fmt: skip
    _add_verbose(p)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("eval", help="frozen-encoder protocols (linear, kNN, rotation/colour R², transforms)")
    p.add_argument("path", nargs="?", help="run directory or checkpoint directory")
    p.add_argument("--compare", nargs="+", metavar="RUN", help="evaluate several runs and print them side by side")
    p.add_argument("--data", default=None, help="data directory (default: the run's data.path / built-in set)")
    p.add_argument("--protocols", default=None, help="comma list: linear,knn,rotation,color,transforms")
    p.add_argument(
        "--fast",
        action="store_true",
        help="CPU preset (eval.fast): at most 30 epochs and width 512 per probe, at least 1,500 steps",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="eval.KEY=VALUE",
        help="override an eval setting of the run's config, e.g. eval.rotation.epochs=100 (repeatable)",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to extract features on with Ray Data "
        "(default: $RAY_ADDRESS; none = this process, unless eval.extractor=ray)",
    )
    p.add_argument("--checkpoint", choices=["latest", "best"], default="latest")
    p.add_argument("--out", default=None, help="results JSON (default: <checkpoint>/eval/results.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (or --cross-view-grid PNG)")
    p.add_argument(
        "--cross-view-grid",
        default=None,
        metavar="PNG",
        help="xrecon only, instead of the protocols: a picture of 8 held-out pairs decoded from their own views and "
        "with each of the decoder's inputs swapped for another pair's (what the decoder uses)",
    )
    p.add_argument(
        "--protocol-items",
        action="store_true",
        help="evaluate under rayeq's protocol, under each of SIE's protocol items alone (raw probe inputs, BatchNorm "
        "in train mode, one view per object, SIE's normalisation) and under eval.preset=sie: a table of how far "
        "each moves every figure (<checkpoint>/eval/protocol-items.md, or --out)",
    )
    _add_verbose(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train", help="train on Ray Train (TorchTrainer + Ray Data); reruns resume")
    _add_config_args(p)
    p.add_argument("--address", default=None, help="join this Ray cluster (default: $RAY_ADDRESS or a local one)")
    p.add_argument("--force", action="store_true", help="resume a run's checkpoint even under a changed config")
    p.add_argument(
        "--autoscaling",
        action="store_true",
        help="the cluster adds nodes on demand: skip the check that its present nodes can hold the workers",
    )
    _add_verbose(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="hyper-parameter sweep: Ray Tune + Optuna (multi-objective), ASHA, resume")
    p.add_argument("sweep", help="sweep YAML (see sweeps/)")
    _add_tune_args(p, "sweep", "trial", "finished trials are kept", "track.repo=/abs/aim")
    _add_verbose(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "study", help="compare methods: arms x seeds (x settings) trained on Ray, evaluated, summarised with floors"
    )
    p.add_argument("study", help="study YAML (see studies/)")
    _add_tune_args(p, "study", "run", "finished runs and evaluations are kept", "train.epochs=1")
    p.add_argument(
        "--summary-only",
        action="store_true",
        help="train nothing: write the summary of the runs evaluated so far, the others marked as not run",
    )
    _add_verbose(p)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("bench", help="measure: Ray path vs plain PyTorch, reconstruction overhead, data pipeline")
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    common = argparse.ArgumentParser(add_help=False)  # what both benchmarks take
    common.add_argument(
        "--size", type=int, default=None, help="image side (the built-in set is resized; throughput 32, data 64)"
    )
    common.add_argument("--batch", type=int, default=None, help="pairs per batch (throughput 32, data 256)")
    common.add_argument("--out", default=None, help="write every figure as JSON")
    common.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_verbose(common)
    b = bsub.add_parser(
        "throughput", parents=[common], help="training images/s: plain PyTorch loop vs Ray Train + Ray Data"
    )
    b.add_argument("--method", choices=["xrecon", "vicreg", "simclr", "sie"], default="xrecon")
    b.add_argument(
        "--steps", type=int, default=None, help="steps per epoch (default: train.steps_per_epoch, or one pass)"
    )
    b.add_argument(
        "--epochs", type=int, default=5, help="epochs of each whole run (both sides; the first is the warm-up)"
    )
    b.add_argument("--val-steps", type=int, default=4, help="validation batches in the first and the last epoch")
    b.add_argument("--repeats", type=int, default=3, help="timed repeats of the fixed-batch step, after one warm-up")
    b.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: CPUs - 1)")
    b.add_argument("--skip-ray", action="store_true", help="only the plain loop and the overhead")
    b.add_argument(
        "--data-cpus",
        type=int,
        default=None,
        help="CPUs making pairs on both sides: DataLoader workers and Ray Data actors (default: CPUs - threads)",
    )
    b.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda when torch sees one")
    b.add_argument("--compile", action="store_true", help="torch.compile the training module on both sides")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override")
    b = bsub.add_parser(
        "data",
        parents=[common],
        help="render images/s (PyTorch vs pybullet, parity), pairs/s per core (built-in set, JPEG), Ray Data's total",
    )
    b.add_argument("--sheet", default=None, metavar="PNG", help="write a contact sheet of both renderers' views")
    b.add_argument("--render-only", action="store_true", help="only the renderers (no pair pipeline, no Ray)")
    b.add_argument("--seconds", type=float, default=20.0, help="time spent on the per-core figures, in all")
    b.add_argument(
        "--feed", type=float, default=None, metavar="PAIRS_PER_S", help="also print the cores needed to feed this rate"
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("config", help="validate or print a resolved experiment config")
    p.add_argument("action", choices=["show", "check"], help="show: print the resolved YAML; check: validate")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)
    return parser


def live_stdout() -> None:
    """Every line rayeq prints reaches stdout as it is printed, also when stdout is a file or a pipe (`> log`,
    `nohup`, `tee`, CI, `ray job submit`'s entrypoint), where Python would otherwise hold lines back in an 8 KB
    buffer until it fills or the process ends: whole epochs of progress would arrive at once, at the end."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)  # a replaced stdout (a test's capture) may not have it
    if reconfigure is not None and not sys.stdout.line_buffering:
        reconfigure(line_buffering=True)


def main(argv: list[str] | None = None) -> int:
    live_stdout()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if not (getattr(args, "address", None) or os.environ.get("RAY_ADDRESS") or "ray" in sys.modules):
        # a local Ray instance, if one starts, uses token auth (Ray's default), said before Ray is imported (Ray
        # reads it once, on import: set later, the GCS and this process would disagree and Ray would not start)
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    if getattr(args, "verbose", False):
        os.environ["RAYEQ_VERBOSE"] = "1"  # read where Ray is started (rayeq.cluster.connect_ray)
    try:
        return args.func(args)
    except (ConfigError, DataError) as exc:
        print(f"rayeq: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
