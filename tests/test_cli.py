"""The CLI entry point: commands are discovered, bad input is one line and exit code 2, and the
Top-k options are one shared set (in process: typer's CliRunner or `main` with sys.argv)."""

import sys
import typing

import pytest
from typer.testing import CliRunner

import topkattn.cli as cli
from tests.helpers import run_main
from topkattn.cli import topk_options as T




def test_help_lists_commands():
    r = CliRunner().invoke(cli.app, ["--help"])
    assert r.exit_code == 0
    for name in ("info", "eval", "train", "fidelity", "entropy", "bench"):
        assert name in r.output


def test_info_runs():
    r = CliRunner().invoke(cli.app, ["info"])
    assert r.exit_code == 0, r.output
    assert "selectors" in r.output and "exact" in r.output


def test_user_errors_become_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    from topkattn.errors import InputError

    # the two commands exist for this test only (other tests list the app's commands)
    monkeypatch.setattr(cli.app, "registered_commands", list(cli.app.registered_commands))

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


def test_unknown_option_is_a_usage_error(monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "info", "--bogus")
    assert code == 2 and "No such option" in err


@pytest.mark.parametrize("command", ["fidelity", "entropy", "eval"])
def test_bad_length_is_one_line(monkeypatch, capsys, command):
    code, _, err = run_main(monkeypatch, capsys, command,
                            "--length" if command != "eval" else "--lengths", "2x")
    assert code == 2
    assert err.strip().splitlines() == [
        "error: length must be a number of tokens such as 1024 or 1k, got '2x'"]


# --------------------------------------------------------------------------------------------
# One set of Top-k options

#: the Top-k options each command takes (those that mean something for it)
TOPK_FLAGS = {
    "eval": {"--k", "--sink", "--local", "--dense-layers", "--min-context", "--granularity",
             "--selector", "--backend", "--decode-graphs"},
    "train": {"--k", "--sink", "--local", "--dense-layers", "--min-context", "--granularity",
              "--selector", "--backend"},
    "fidelity": {"--k", "--sink", "--local", "--dense-layers", "--min-context",
                 "--granularity", "--backend"},
    "entropy": {"--k"},
}


def _options(command: str) -> dict[str, object]:
    import typer.main

    group = typer.main.get_command(cli.app)
    return {p.opts[0]: p for p in group.commands[command].params}


def _shared() -> dict[str, set[str]]:
    """flag -> the help texts the shared aliases of `topk_options` declare for it."""
    out: dict[str, set[str]] = {}
    for name in T.__all__:
        alias = getattr(T, name)
        for meta in getattr(alias, "__metadata__", ()):
            decl = meta.param_decls[0] if meta.param_decls else meta.default
            out.setdefault(decl.split("/")[0], set()).add(meta.help)  # "--x/--no-x": "--x"
    return out


@pytest.mark.parametrize("command", sorted(TOPK_FLAGS))
def test_topk_options_are_the_shared_ones_in_one_panel(command):
    opts = _options(command)
    panel = {flag for flag, p in opts.items() if getattr(p, "rich_help_panel", None) == T.PANEL}
    assert panel == TOPK_FLAGS[command]
    shared = _shared()
    for flag in panel:
        assert opts[flag].help in shared[flag], (command, flag)  # declared once, there
    r = CliRunner().invoke(cli.app, [command, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and T.PANEL in r.output


def test_flags_kept_from_before():
    """Flags that existed before the shared options still parse (backward compatible)."""
    assert {"--k", "--sink", "--local", "--dense-layers", "--granularity",
            "--selector"} <= set(_options("eval"))
    assert {"--k", "--sink", "--local", "--backend"} <= set(_options("train"))
    assert {"--k", "--selector"} <= set(_options("fidelity"))
    assert "--k" in _options("entropy")


def test_topk_config_builds_one_config_from_the_options():
    from topkattn.config import TopKConfig
    from topkattn.selectors import QuestSelector

    cfg = T.topk_config("5%", sink=1, local=2, granularity="kv_group", selector="quest:8",
                        dense_layers="0, 2", min_context=32, backend="reference",
                        phases="decode,prefill")
    assert cfg == TopKConfig(k=None, k_ratio=0.05, phases=("decode", "prefill"), sink=1,
                             local=2, dense_layers=(0, 2), min_context=32,
                             granularity="kv_group", selector=QuestSelector(page_size=8),
                             backend="reference")
    assert T.topk_config("full").dense and T.topk_config("8", selector="").selector is None
    base, ks = T.topk_sweep("8,full,5%,8", sink=3)
    assert base.dense and base.sink == 3 and ks == ("8", "full", "5%")


@pytest.mark.parametrize("call,match", [
    (lambda: T.topk_config("abc"), "got 'abc'"),
    (lambda: T.topk_config("8", granularity="head"), "got 'head'"),
    (lambda: T.topk_config("8", dense_layers="1,a"), "got '1,a'"),
    (lambda: T.topk_config("8", phases="train"), "phases must be"),
    (lambda: T.topk_sweep("8,0"), "got k=0"),
])
def test_topk_config_bad_values_name_them(call, match):
    from topkattn.errors import TopkattnError

    with pytest.raises(TopkattnError, match=match):
        call()


def test_alias_types_are_annotated():
    for name in ("KOpt", "KListOpt", "SinkOpt", "LocalOpt", "GranularityOpt", "SelectorOpt",
                 "DenseLayersOpt", "MinContextOpt", "BackendOpt", "PhasesOpt"):
        assert typing.get_origin(getattr(T, name)) is typing.Annotated
