"""Checks first, writes after: a command that refuses leaves every directory it was pointed at byte for byte as it
was (run, sweep, study, data and Aim directories), and it refuses before a Ray instance starts where the check needs
no cluster. Each test snapshots a workspace (every directory, every file's bytes and modification time), runs one
refused command through the CLI, and compares."""

import hashlib
from pathlib import Path

import pytest

from rayeq.cli import main
from rayeq.config import load_config

ROOT = Path(__file__).parents[1]


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_dir():
            out[rel] = ("dir",)
        else:
            st = p.stat()
            out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from rayeq.data.make.synth3d import generate

    out = tmp_path_factory.mktemp("refusal-data") / "synth3d"
    generate(out, classes=3, objects_per_class=6, views=3, size=32, seed=0, workers=1, log=lambda *a: None)
    return out


@pytest.fixture
def ws(tmp_path, data_dir, monkeypatch):
    """A user's workspace after some work: a data set, a run with its config, metrics and a checkpoint-like file, an
    Aim repo directory, an eval result; and Ray made unstartable (a refusal must come first)."""
    import shutil

    import rayeq.cluster

    shutil.copytree(data_dir, tmp_path / "data")
    for d in ("configs", "sweeps", "studies"):  # the user works in a clone: the files name each other relatively
        shutil.copytree(ROOT / d, tmp_path / d)
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    cfg = load_config(ROOT / "configs" / "cpu_small.yaml", [f"data.path={tmp_path / 'data'}", "train.name=r1"])
    cfg.dump(run / "config.yaml")
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train/total": 9.0}\n')
    (tmp_path / "aim").mkdir()
    (tmp_path / "aim" / "keep.txt").write_text("the user's Aim repo\n")
    (tmp_path / "result.json").write_text("{}\n")
    monkeypatch.chdir(tmp_path)

    def no_ray(*a, **k):
        raise AssertionError("Ray was started before the command refused")

    monkeypatch.setattr(rayeq.cluster, "connect_ray", no_ray)
    return tmp_path


def refused(ws: Path, argv: list[str], capsys, *words: str) -> str:
    before = snapshot(ws)
    assert main(argv) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, err
    assert snapshot(ws) == before, "the refused command changed the workspace"
    return err


TRAIN = ["train", str(ROOT / "configs" / "cpu_small.yaml")]


def data_args(ws: Path) -> list[str]:
    return [f"data.path={ws / 'data'}", f"train.storage_path={ws / 'runs'}", f"track.repo={ws / 'aim'}"]


def test_train_refused_for_resources_leaves_the_run_and_makes_no_new_one(ws, capsys):
    refused(ws, [*TRAIN, *data_args(ws), "train.name=r1", "train.num_workers=64"], capsys, "train.num_workers=64")
    refused(ws, [*TRAIN, *data_args(ws), "train.name=new", "train.num_workers=64"], capsys, "this machine")
    assert not (ws / "runs" / "new").exists()


def test_train_refused_under_another_config_or_without_data(ws, capsys):
    refused(ws, [*TRAIN, *data_args(ws), "train.name=r1", "loss.recon_weight=3"], capsys, "loss.recon_weight")
    refused(ws, [*TRAIN, *data_args(ws)[1:], "data.path=nowhere", "train.name=new"], capsys, "nowhere")
    refused(ws, [*TRAIN, *data_args(ws), "train.name=new", "train.batch_size=4096"], capsys, "train.batch_size")


def test_train_refused_on_a_storage_path_that_is_a_file(ws, capsys):
    refused(ws, [*TRAIN, *data_args(ws), f"train.storage_path={ws / 'result.json'}"], capsys, "train.storage_path")


def test_sweep_and_study_refused_before_their_directories_exist(ws, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    for kind, folder in (("sweep", "sweeps"), ("study", "studies")):
        out = ws / f"{folder}_out"
        argv = [kind, f"{folder}/smoke.yaml", "--storage-path", str(out), "--set"]
        refused(ws, [*argv, "train.num_workers=32"], capsys, "this machine")
        refused(ws, [*argv, "loss.recon_wieght=1"], capsys, "recon_wieght")
        with monkeypatch.context() as m:  # a venv without the aim extra
            m.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aim" else real(name, *a))
            refused(ws, [*argv, "track.backend=aim"], capsys, "rayeq[aim]")
        assert not out.exists()


def _checkpoint(run: Path) -> None:
    """A checkpoint in the format of rayeq.train.loop (without running Ray Train)."""
    import torch
    import yaml

    from rayeq.config import from_dict
    from rayeq.data.feed.normalize import norm_stats
    from rayeq.data.schema import read_meta
    from rayeq.methods import build_method

    cfg = from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    meta = read_meta(cfg.data.path)
    method = build_method(cfg, num_classes=len(meta["classes"]))
    mean, std = norm_stats(meta)
    n = len(meta["classes"])
    ckpt = run / "checkpoint_2026-01-01_00-00-00.000000"
    ckpt.mkdir()
    torch.save({"model": {f"method.{k}": v for k, v in method.state_dict().items()}, "epoch": 1, "step": 4,
                "config": cfg.to_dict(), "tracker_run_id": None, "metrics": {"val/top1": 0.5},
                "data": {"mean": mean, "std": std, "num_classes": n}}, ckpt / "state.pt")  # fmt: skip


def test_eval_refusals_leave_the_run_and_the_results(ws, capsys):
    run = ws / "runs" / "r1"
    refused(ws, ["eval", str(run), "--fast"], capsys, "checkpoint")
    refused(ws, ["eval", str(ws / "runs" / "missing"), "--fast"], capsys, "does not exist")
    _checkpoint(run)
    refused(ws, ["eval", str(run), "--fast", "--out", "result.json"], capsys, "--overwrite")
    refused(ws, ["eval", str(run), "--set", "model.inv_dim=3"], capsys, "model.inv_dim")
    refused(ws, ["eval", str(run), "--protocols", "linear,rotaton"], capsys, "rotaton")


def test_data_commands_refuse_without_touching_their_output(ws, capsys):
    refused(ws, ["data", "synth3d", "--out", str(ws / "data"), "--classes", "2"], capsys, "--overwrite")
    refused(ws, ["data", "folder", "--src", str(ws / "nowhere"), "--out", str(ws / "new")], capsys, "nowhere")
    refused(ws, ["data", "3diebench", "--src", str(ws / "nowhere"), "--out", str(ws / "new")], capsys, "nowhere")
    refused(ws, ["data", "synth3d", "--out", str(ws / "new"), "--classes", "99"], capsys, "classes")
    assert not (ws / "new").exists()
