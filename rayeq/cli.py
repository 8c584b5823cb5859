"""`rayeq` command line: thin wrappers around the library."""

from __future__ import annotations

import argparse
import sys

from rayeq import __version__
from rayeq.config import ConfigError, load_config

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

    p = sub.add_parser("config", help="validate or print a resolved experiment config")
    p.add_argument("action", choices=["show", "check"], help="show: print the resolved YAML; check: validate")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"rayeq: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
