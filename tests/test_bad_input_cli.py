"""The bad-input matrix of the command line, every command: each case must exit with code 2,
print one line ``error: ...`` that names the bad value, no traceback, and load no model first
(`load_model` is replaced by a function that fails the test). In process, through
`topkattn.cli.main`. ``FILE`` in a case stands for an existing plain file."""

from __future__ import annotations

import pytest

from tests.helpers import run_main

IDX = "OUT/i.safetensors"

CASES = [
    # eval
    ("eval --lengths 0 --out OUT", "'0'"),
    ("eval --lengths 1x --out OUT", "'1x'"),
    ("eval --lengths , --out OUT", "at least one length"),
    ("eval --samples 0 --out OUT", "got 0"),
    ("eval --samples -1 --out OUT", "got -1"),
    ("eval --k 1.5x --out OUT", "'1.5x'"),
    ("eval --k full,abc --out OUT", "'abc'"),
    ("eval --dense-layers x --out OUT", "'x'"),
    ("eval --dense-layers -1 --out OUT", "(-1,)"),
    ("eval --min-context -5 --out OUT", "min_context=-5"),
    ("eval --local -2 --out OUT", "local=-2"),
    ("eval --backend bogus --out OUT", "'bogus'"),
    ("eval --selector bogus --out OUT", "'bogus'"),
    ("eval --selector precision:1.5 --out OUT", "1.5"),
    ("eval --selector lightning:/nonexistent/w.safetensors --out OUT",
     "'/nonexistent/w.safetensors'"),
    ("eval --selector lightning:FILE --out OUT", "FILE"),
    ("eval --max-new-tokens 0 --out OUT", "got 0"),
    ("eval --shard 3/2 --out OUT", "'3/2'"),
    ("eval --shard x --out OUT", "'x'"),
    ("eval --report-only --out NOWHERE", "NOWHERE"),
    # train
    ("train --data synthetic:bogus --out OUT", "'bogus'"),
    ("train --data synthetic:passkey@0 --out OUT", "got 0"),
    ("train --data /nonexistent.jsonl --out OUT", "'/nonexistent.jsonl'"),
    ("train --data synthetic:passkey --out OUT --lr -1", "lr=-1.0"),
    ("train --data synthetic:passkey --out OUT --batch-size 0", "batch_size=0"),
    ("train --data synthetic:passkey --out OUT --selector bogus", "'bogus'"),
    ("train --data synthetic:passkey --out OUT --granularity rows", "'rows'"),
    ("train --data synthetic:passkey --out FILE", "FILE"),
    # train-indexer
    (f"train-indexer --steps 0 --out {IDX}", "got 0"),
    (f"train-indexer --rows 0 --out {IDX}", "got 0"),
    (f"train-indexer --heads 0 --out {IDX}", "got 0"),
    (f"train-indexer --query-source bogus --out {IDX}", "'bogus'"),
    (f"train-indexer --lr 0 --out {IDX}", "got 0.0"),
    (f"train-indexer --tasks bogus --out {IDX}", "'bogus'"),
    (f"train-indexer --device bogus --out {IDX}", "'bogus'"),
    (f"train-indexer --restrict-topk -1 --out {IDX}", "got -1"),
    ("train-indexer --out FILE/i.safetensors", "FILE"),
    # fidelity
    ("fidelity --task bogus --out OUT", "'bogus'"),
    ("fidelity --samples 0 --out OUT", "samples=0"),
    ("fidelity --steps 0 --out OUT", "steps=0"),
    ("fidelity --length 2x --out OUT", "'2x'"),
    ("fidelity --k full --out OUT", "k=full"),
    ("fidelity --selector bogus --out OUT", "'bogus'"),
    ("fidelity --selector lightning:FILE --out OUT", "FILE"),
    ("fidelity --protect -1 --out OUT", "protect=-1"),
    ("fidelity --granularity rows --out OUT", "'rows'"),
    # entropy
    ("entropy --task bogus --out OUT", "'bogus'"),
    ("entropy --samples 0 --out OUT", "samples=0"),
    ("entropy --steps 0 --out OUT", "decode_steps=0"),
    ("entropy --length 2x --out OUT", "'2x'"),
    ("entropy --k full --out OUT", "'full'"),
    ("entropy --k 0 --out OUT", "k=0"),
    ("entropy --device bogus --out OUT", "'bogus'"),
    ("entropy --seed -1 --out OUT", "seed=-1"),
    ("entropy --out FILE", "FILE"),
    # bench
    ("bench --op bogus --out OUT", "'bogus'"),
    ("bench --op decode --ctx 0 --out OUT", "'0'"),
    ("bench --op decode --ctx 8x --out OUT", "'8x'"),
    ("bench --op decode --k 0 --out OUT", "'0'"),
    ("bench --op decode --batch x --out OUT", "'x'"),
    ("bench --op generate --modes bogus --out OUT", "'bogus'"),
    ("bench --op generate --paths bogus --out OUT", "'bogus'"),
    ("bench --op generate --layers 0 --out OUT", "got 0"),
    ("bench --op decode --modes dense-flash --out OUT", "--modes"),
    ("bench --op decode --out FILE", "FILE"),
    # study
    ("study --claims 9 --out OUT", "'9'"),
    ("study --claims x --out OUT", "'x'"),
    ("study --budget bogus --out OUT", "'bogus'"),
    ("study --device bogus --out OUT", "'bogus'"),
    ("study --lengths 2x --out OUT", "'2x'"),
    ("study --samples 0 --out OUT", "got 0"),
    ("study --tasks bogus --out OUT", "'bogus'"),
    ("study --file-tasks helmet:/nonexistent.jsonl --out OUT", "'/nonexistent.jsonl'"),
    ("study --max-new-tokens 0 --out OUT", "got 0"),
    ("study --steps 0 --out OUT", "got 0"),
    ("study --train-seeds x --out OUT", "'x'"),
    ("study --threads 0 --out OUT", "got 0"),
    ("study --seed -1 --out OUT", "got -1"),
    ("study --out FILE", "FILE"),
    ("study --report-only --out NOWHERE", "NOWHERE"),
]
ENV_CASES = [  # (command, environment variable value): info and the commands that run ops
    ("info", "bogus"), ("eval --out OUT", "bogus"), ("fidelity --out OUT", "trito"),
    ("bench --op decode --out OUT", "bogus"),
]


@pytest.fixture
def no_model(monkeypatch):
    import topkattn.models as models

    def fail(*a, **k):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(models, "load_model", fail)


def _check(monkeypatch, capsys, tmp_path, argv: str, needle: str) -> str:
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "plain.txt"
    f.write_text("a file, not a folder nor weights")
    nowhere = str(tmp_path / "no-such-run")
    args = [a.replace("FILE", str(f)).replace("NOWHERE", nowhere) for a in argv.split()]
    needle = needle.replace("FILE", str(f)).replace("NOWHERE", nowhere)
    code, out, err = run_main(monkeypatch, capsys, *args)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2, (argv, code, out, err)
    assert "Traceback" not in out + err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
    assert needle in lines[0], (argv, needle, err)
    return lines[0]


@pytest.mark.parametrize("argv, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_cli_input_is_one_named_line_and_exit_2(argv, needle, monkeypatch, capsys,
                                                    tmp_path, no_model):
    monkeypatch.delenv("TOPKATTN_BACKEND", raising=False)
    _check(monkeypatch, capsys, tmp_path, argv, needle)


@pytest.mark.parametrize("argv, value", ENV_CASES, ids=[c[0].split()[0] for c in ENV_CASES])
def test_bad_backend_variable_is_one_named_line(argv, value, monkeypatch, capsys, tmp_path,
                                                no_model):
    monkeypatch.setenv("TOPKATTN_BACKEND", value)
    _check(monkeypatch, capsys, tmp_path, argv, f"TOPKATTN_BACKEND={value!r}")


def test_every_command_is_in_the_matrix():
    import topkattn.cli as cli

    commands = {c.name for c in cli.app.registered_commands} | {
        g.name for g in cli.app.registered_groups}
    covered = {argv.split()[0] for argv, _ in CASES}
    assert commands - covered <= {"info"}, commands - covered  # info takes no options: env
    assert "info" in {argv.split()[0] for argv, _ in ENV_CASES}
    assert len(CASES) + len(ENV_CASES) >= 80
