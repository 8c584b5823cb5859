"""The README's Quickstart is what CI runs, and what the README names exists."""

import re
from pathlib import Path

from rayeq.cli import build_parser

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def quickstart_commands() -> list[str]:
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_quickstart_has_two_commands_that_ci_runs():
    install_and_run, tests = quickstart_commands()
    assert "\n" not in install_and_run and "\n" not in tests
    ci = (ROOT / ".ci" / "run").read_text()
    install = install_and_run.split(" && .venv/bin/rayeq ")[0]
    assert install in ci, "the README's install command must be the one .ci/run uses"
    assert tests in ci, "the README's test command must be the one .ci/run uses"
    assert "-c constraints.txt" in install and (ROOT / "constraints.txt").is_file()


def test_quickstart_main_job_is_a_real_command():
    install_and_run, _ = quickstart_commands()
    command = install_and_run.split(".venv/bin/rayeq ", 1)[1].split()[0]
    subcommands = build_parser()._subparsers._group_actions[0].choices
    assert command in subcommands


def test_configs_named_in_readme_exist():
    for name in re.findall(r"`(\w+_(?:synth3d|3diebench|imagefolder))`", README):
        assert (ROOT / "configs" / f"{name}.yaml").is_file(), name


def test_no_source_file_is_gitignored_and_every_package_has_an_init():
    import shutil
    import subprocess

    sources = sorted((ROOT / "rayeq").rglob("*.py"))
    for d in {p.parent for p in sources}:
        assert (d / "__init__.py").is_file(), f"{d} has no __init__.py"
    if shutil.which("git") and (ROOT / ".git").exists():
        rel = [str(p.relative_to(ROOT)) for p in sources]
        proc = subprocess.run(["git", "check-ignore", *rel], cwd=ROOT, capture_output=True, text=True)
        assert proc.stdout.strip() == "", f".gitignore hides source files: {proc.stdout.split()}"
