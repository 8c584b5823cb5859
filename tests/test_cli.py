import subprocess
import sys

import yaml

from rayeq.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "config" in out


def test_config_show_resolves_overrides(capsys):
    assert main(["config", "show", "loss.recon_weight=0.5", "method.name=sie"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["loss"]["recon_weight"] == 0.5 and shown["method"]["name"] == "sie"


def test_config_error_exit_code_and_message(capsys):
    assert main(["config", "check", "loss.recon_wieght=1"]) == 2
    assert "did you mean 'loss.recon_weight'" in capsys.readouterr().err


def test_demo_prints_loss_terms_and_lowers_loss():
    proc = subprocess.run(
        [sys.executable, "-m", "rayeq.cli", "demo", "--steps", "6", "--batch", "8"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("step")]
    assert len(lines) == 6
    assert all("recon=" in ln and "sim=" in ln and "img/s" in ln for ln in lines)
    first = float(lines[0].split("total=")[1].split()[0])
    last = float(lines[-1].split("total=")[1].split()[0])
    assert last < first
