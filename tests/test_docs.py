"""The README's Quickstart is what CI runs, and what the README names exists."""

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

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


# --- every command the README shows, and every command rayeq prints, runs as written ----------------------------

VENV_BIN = Path(sys.executable).parent  # the README's `.venv/bin`: where the install command put the executables


def _readme_commands() -> list[list[str]]:
    """The README's bash blocks as argument lists: continuation lines joined, comments dropped, `&&` / `;` chains
    split, environment assignments (`RAY_AUTH_MODE=token ...`) dropped. A block after `. .venv/bin/activate` runs
    with the venv on the PATH; `["activate"]` marks the point."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        commands.append(["--block--"])
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            chain: list[str] = []
            for w in [*words, "&&"]:
                if w in ("&&", ";", "||"):
                    while chain and re.fullmatch(r"[A-Z_]+=.*", chain[0]):
                        chain.pop(0)
                    if chain:
                        commands.append(["activate"] if chain[:2] == [".", ".venv/bin/activate"] else chain)
                    chain = []
                else:
                    chain.append(w)
    return commands


def _system_path() -> str:
    """The PATH of a user who never activated the venv."""
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != VENV_BIN)


def _parses(argv: list[str]) -> None:
    """`rayeq ARGS` parses (an argparse error exits 2 with its message)."""
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`rayeq {shlex.join(argv)}` does not parse (exit {exc.code})") from None


def _click_parses(group, argv: list[str], prog: str):
    """A click command line (Ray's and Aim's CLIs) parses down to its subcommand, options checked."""
    import click

    def rest(ctx) -> list[str]:  # a group's context holds the subcommand's name apart from its arguments
        return [*(getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])), *ctx.args]

    ctx = group.make_context(prog, list(argv))
    cmd = group
    while isinstance(cmd, click.Group):
        name, cmd, args = cmd.resolve_command(ctx, rest(ctx))
        ctx = cmd.make_context(name, args, parent=ctx)
    return ctx


def _check_command(argv: list[str], activated: bool, installed: frozenset[str] = frozenset()) -> None:
    exe, args = argv[0], argv[1:]
    if exe.removeprefix(".venv/bin/") in installed:
        return  # put into the venv by a `pip install` earlier in the same block (a developer tool, e.g. mutmut)
    if exe.startswith(".venv/bin/"):
        path = VENV_BIN / exe.removeprefix(".venv/bin/")
        assert path.is_file(), f"`{exe}` is not in the README's venv ({VENV_BIN})"
        name = path.name
    else:
        on_path = shutil.which(exe, path=_system_path()) or (activated and (VENV_BIN / exe).is_file())
        assert on_path, f"`{exe}` is not on the PATH of a user who followed the README (the venv is not activated)"
        name = exe
    if name == "rayeq":
        _parses(args)
    elif name == "aim":
        from aim.cli.cli import cli_entry_point

        _click_parses(cli_entry_point, args, "aim")
    elif name == "ray":
        from ray.scripts.scripts import cli

        ctx = _click_parses(cli, args, "ray")
        if "--" in args:  # `ray job submit ... -- rayeq sweep ...`: the entrypoint too
            entry = args[args.index("--") + 1 :]
            _check_command(entry, activated=True)  # the job's driver runs with the head's PATH
        assert ctx is not None


@pytest.mark.extras  # the README's install has the extras: its `aim up` lines need Aim
def test_every_readme_command_runs_as_written(tmp_path, monkeypatch):
    """Each executable the README calls exists where the README's install leaves it (the venv, unactivated, unless
    its block activated it), and each `rayeq`, `aim` and `ray` command line parses with its real CLI (in a directory
    holding what the quickstart leaves: the Aim repo `aim`)."""
    (tmp_path / "aim").mkdir()
    monkeypatch.chdir(tmp_path)
    checked, activated, installed = 0, False, set()
    for argv in _readme_commands():
        if argv == ["--block--"]:
            activated, installed = False, set()
            continue
        if argv == ["activate"]:
            assert (VENV_BIN / "activate").is_file()
            activated = True
            continue
        if argv[0] in ("python3",) and argv[1:3] == ["-m", "venv"]:
            continue  # makes the venv this test runs in
        _check_command(argv, activated, frozenset(installed))
        if argv[0] == ".venv/bin/pip" and argv[1:2] == ["install"]:
            installed |= {re.split(r"[=<>\[]", a)[0] for a in argv[2:] if not a.startswith("-")}
        checked += 1
    assert checked >= 25, f"only {checked} commands found in the README's bash blocks"


def _printed_commands() -> list[str]:
    """Commands rayeq's own messages suggest: backquoted `rayeq ...` in string literals that are not docstrings."""
    import ast

    found = []
    for path in (ROOT / "rayeq").rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found += [(path.name, m) for m in re.findall(r"`(rayeq [^`{}]+)`", node.value)]
    return found


def test_every_command_rayeq_prints_parses():
    found = _printed_commands()
    assert len(found) >= 3, found
    for where, command in found:
        argv = shlex.split(command.replace("RUN", "runs/x"))[1:]
        try:
            _parses(argv)
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from None


def test_the_printed_tensorboard_command_runs_from_where_the_install_leaves_the_user(tmp_path, monkeypatch):
    """Without Aim the run prints a `tensorboard --logdir` line (track.look_at_line): its executable is the venv's,
    and TensorBoard's own flag parser takes its arguments."""
    from tensorboard import program

    from rayeq.track import look_at_line

    (tmp_path / "tensorboard").mkdir()
    for cwd in (ROOT, tmp_path):
        monkeypatch.chdir(cwd)
        line = look_at_line("tensorboard", str(tmp_path / "tensorboard"))
        argv = shlex.split(line.removeprefix("look at it: ").split("   (")[0])
        exe = Path(argv[0]) if Path(argv[0]).is_absolute() else cwd / argv[0]
        assert exe.is_file() and os.access(exe, os.X_OK), argv[0]
        assert Path(os.path.abspath(exe)).parent == Path(os.path.abspath(VENV_BIN)), "not the venv's tensorboard"
        tb = program.TensorBoard()
        tb.configure(argv=[argv[0], *argv[1:]])
        assert (tb.flags.logdir, tb.flags.host, tb.flags.port) == (str(tmp_path / "tensorboard"), "127.0.0.1", 6006)
        with pytest.raises(SystemExit):  # the parser really checks: an unknown flag is refused
            program.TensorBoard().configure(argv=[argv[0], *argv[1:], "--logdirr", "x"])


@pytest.mark.extras
def test_the_printed_aim_up_command_runs_from_where_the_readme_leaves_the_user(tmp_path, monkeypatch):
    """The quickstart prints the `aim up` line from `aim_up_command`: its executable is the venv's (a user who never
    activated the venv has no `aim` on the PATH), run from the repository root or from anywhere else."""
    from aim.cli.cli import cli_entry_point

    from rayeq.track import aim_up_command

    (tmp_path / "aim").mkdir()
    for cwd in (ROOT, tmp_path):
        monkeypatch.chdir(cwd)
        argv = shlex.split(aim_up_command(str(tmp_path / "aim")))
        exe = Path(argv[0]) if Path(argv[0]).is_absolute() else cwd / argv[0]
        assert exe.is_file() and os.access(exe, os.X_OK), argv[0]
        assert Path(os.path.abspath(exe)).parent == Path(os.path.abspath(VENV_BIN)), "not the venv's aim"
        _click_parses(cli_entry_point, argv[1:], "aim")
