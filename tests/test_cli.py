"""ldm/cli.py: the one-line error report, the exit statuses of run_cli, and no torch on import."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ldm.cli import UsageError, report_error, run_cli

ROOT = Path(__file__).resolve().parents[1]


def raising(error: BaseException) -> Callable[[], int]:
    """A `run` that raises `error`."""

    def run() -> int:
        raise error

    return run


def test_report_error_is_one_line_with_whitespace_folded(capsys) -> None:
    report_error("tool.py", "--input a.png:\n  no  such\tfile ")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "tool.py: error: --input a.png: no such file\n"


def test_run_cli_returns_the_status_of_run(capsys) -> None:
    assert run_cli("tool.py", lambda: 0) == 0
    assert run_cli("tool.py", lambda: 3) == 3
    assert capsys.readouterr().err == ""


def test_a_usage_error_is_reported_and_exits_2(capsys) -> None:
    assert run_cli("tool.py", raising(UsageError("--steps 0:\nmust be positive"))) == 2
    assert capsys.readouterr().err == "tool.py: error: --steps 0: must be positive\n"


def test_ctrl_c_is_reported_and_exits_130(capsys) -> None:
    assert run_cli("tool.py", raising(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "tool.py: error: interrupted\n"
    assert run_cli("tool.py", raising(KeyboardInterrupt()), interrupted="interrupted (run again)") == 130
    assert capsys.readouterr().err == "tool.py: error: interrupted (run again)\n"


def test_user_errors_exit_2_failures_exit_1_and_nothing_else_is_caught(capsys) -> None:
    from ldm.errors import CheckpointMismatchError, ConfigError

    assert run_cli("tool.py", raising(ConnectionError("refused")), failures=(ConnectionError,)) == 1
    assert capsys.readouterr().err == "tool.py: error: refused\n"
    assert run_cli("tool.py", raising(OSError("no such folder")), user_errors=(OSError,)) == 2
    assert capsys.readouterr().err == "tool.py: error: no such folder\n"
    for error in (ConfigError("model.params.x: bad"), CheckpointMismatchError("a.ckpt: missing keys")):
        assert run_cli("tool.py", raising(error)) == 2  # library errors a user causes: always one line
        assert capsys.readouterr().err == f"tool.py: error: {error}\n"
    with pytest.raises(ValueError, match="a bug"):  # anything else is a bug: its traceback is wanted
        run_cli("tool.py", raising(ValueError("a bug")))


def test_a_script_exits_without_traceback_and_without_torch() -> None:
    script = (
        "import sys\n"
        "from ldm.cli import UsageError, run_cli\n"
        "assert 'torch' not in sys.modules, 'ldm.cli imported torch'\n"
        "def run():\n"
        "    raise UsageError('bad --flag')\n"
        "sys.exit(run_cli('tool.py', run))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr == "tool.py: error: bad --flag\n"


def test_argument_errors_are_one_line_and_exit_2(capsys) -> None:
    from ldm.cli import ArgumentParser

    parser = ArgumentParser(prog="tool.py")
    parser.add_argument("--steps", type=int, required=True)
    for argv, message in (([], "the following arguments are required: --steps"), (["--steps", "x"], "invalid int")):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("tool.py: error: ") and message in err
        assert err.rstrip().endswith("(see tool.py --help)")


def test_int_at_least_is_an_argparse_type_with_a_clear_message(capsys):
    import argparse

    from ldm.cli import int_at_least

    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--steps", type=int_at_least(1))
    assert parser.parse_args(["--steps", "3"]).steps == 3
    for value, message in (("0", "must be at least 1, got 0"), ("two", "invalid int value: 'two'")):
        with pytest.raises(SystemExit):
            parser.parse_args(["--steps", value])
        assert f"argument --steps: {message}" in capsys.readouterr().err
