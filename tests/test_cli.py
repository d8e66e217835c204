"""The CLI entry point: commands are discovered, bad input is one line and exit code 2."""

import subprocess
import sys

import pytest


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-c", "from topkattn.cli import main; main()", *args],
        capture_output=True, text=True, timeout=300,
    )


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    assert "info" in r.stdout


def test_info_runs():
    r = run_cli("info")
    assert r.returncode == 0, r.stderr
    assert "selectors" in r.stdout and "exact" in r.stdout


def test_user_errors_become_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    import topkattn.cli as cli
    from topkattn.errors import InputError

    @cli.app.command("fail-for-test")
    def fail() -> None:
        raise InputError("k must be a positive integer, got k=0")

    @cli.app.command("bug-for-test")
    def bug() -> None:
        raise ValueError("an internal bug")

    monkeypatch.setattr(sys, "argv", ["topkattn", "fail-for-test"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "error: k must be a positive integer, got k=0"
    monkeypatch.setattr(sys, "argv", ["topkattn", "bug-for-test"])
    with pytest.raises(ValueError, match="an internal bug"):  # not swallowed as a user error
        cli.main()


def test_unknown_option_is_a_usage_error():
    r = run_cli("info", "--bogus")
    assert r.returncode == 2 and "No such option" in r.stderr


@pytest.mark.parametrize("command", ["fidelity", "entropy", "eval"])
def test_bad_length_is_one_line(command):
    r = run_cli(command, "--length" if command != "eval" else "--lengths", "2x")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: length must be a number of tokens such as 1024 or 1k, got '2x'"]
