"""kvpress presses as baselines of `topkattn eval`: parsing and validation (always), and a press
run through the eval runner and the CLI on a tiny random Llama (where kvpress is installed)."""

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import run_main, tiny_causal_lm, tiny_llama_for
from topkattn.errors import InputError
from topkattn.evaluation import EvalConfig
from topkattn.integrations import kvpress_baseline as K


# --- parsing and validation (no kvpress needed) ----------------------------------------------

@pytest.mark.parametrize("text,name,ratio,label", [
    ("kvpress:snapkv@0.5", "snapkv", 0.5, "kvpress:snapkv@0.5"),
    ("snapkv@0.50", "snapkv", 0.5, "kvpress:snapkv@0.5"),
    (" KVPRESS:Streaming-LLM@87.5% ", "streaming_llm", 0.875, "kvpress:streaming_llm@0.875"),
    ("kvpress:knorm@0", "knorm", 0.0, "kvpress:knorm@0"),
])
def test_parse_press(text, name, ratio, label):
    spec = K.parse_press(text)
    assert (spec.name, spec.compression_ratio, spec.label) == (name, ratio, label)
    assert K.parse_press(spec.label) == spec  # the label reads back


@pytest.mark.parametrize("text,msg", [
    ("kvpress:snapkv", "must be kvpress:<press>@<compression ratio>"),
    ("kvpress:@0.5", "must be kvpress:<press>@<compression ratio>"),
    ("kvpress:h2o@0.5", "unknown kvpress press 'h2o'"),
    ("kvpress:snapkv@half", "compression ratio 'half'"),
    ("kvpress:snapkv@1", "must be in [0, 1)"),
    ("kvpress:snapkv@-0.1", "must be in [0, 1)"),
    ("kvpress:snapkv@nan", "must be in [0, 1)"),
])
def test_bad_press_names_the_value(text, msg):
    with pytest.raises(InputError) as e:
        K.parse_press(text)
    assert msg in str(e.value) and repr(text) in str(e.value)  # names the value as typed
    if "unknown" in msg or "must be kvpress" in msg:
        assert "snapkv, streaming_llm, expected_attention" in str(e.value)  # what is allowed


def test_press_spec_validates_itself():
    with pytest.raises(InputError, match="unknown kvpress press 'nope'.*allowed: snapkv"):
        K.PressSpec("nope", 0.5)
    for bad in (1.0, -0.5, True, "0.5"):
        with pytest.raises(InputError, match=r"compression ratio of press 'knorm'.*\[0, 1\)"):
            K.PressSpec("knorm", bad)


def test_press_list_repeated_and_comma_separated_without_duplicates():
    specs = K.parse_press_list(["kvpress:snapkv@0.5,kvpress:knorm@0.5", "snapkv@50%", ""])
    assert [s.label for s in specs] == ["kvpress:snapkv@0.5", "kvpress:knorm@0.5"]
    assert K.parse_press_list("") == ()
    with pytest.raises(InputError, match="'tova@2'"):
        K.parse_press_list(["knorm@0.5", "tova@2"])


def test_eval_config_puts_presses_after_the_k_settings(tmp_path):
    cfg = EvalConfig(tasks=("passkey",), lengths=("256",),
                     ks=("kvpress:knorm@0.5", "4", "full", "kvpress:snapkv@0.50",
                         "kvpress:knorm@50%"),
                     out=tmp_path, progress=False)
    assert cfg.ks == ("full", "4", "kvpress:knorm@0.5", "kvpress:snapkv@0.5")
    settings = dict(cfg.settings())
    assert settings["kvpress:snapkv@0.5"] == K.PressSpec("snapkv", 0.5)
    assert settings["4"].k == 4 and settings["full"] is None
    back = EvalConfig.from_json(json.loads(json.dumps(cfg.to_json())))
    assert back.ks == cfg.ks  # eval_config.json keeps the presses
    only = EvalConfig(tasks=("passkey",), ks=("kvpress:tova@0.5",), out=tmp_path)
    assert only.ks == ("full", "kvpress:tova@0.5")
    with pytest.raises(InputError, match="unknown kvpress press 'bogus'"):
        EvalConfig(tasks=("passkey",), ks=("full", "kvpress:bogus@0.5"), out=tmp_path)


def test_bad_press_on_the_command_line_is_one_line_before_the_model(monkeypatch, capsys,
                                                                     tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "eval", "--model", "/no/such/model",
                            "--task", "passkey", "--press", "kvpress:snapkv@0.5",
                            "--press", "kvpress:snap@0.5", "--out", str(tmp_path / "o"))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "unknown kvpress press 'snap'" in err and "snapkv" in err
    assert "/no/such/model" not in err  # refused before any model is looked at


def test_missing_kvpress_is_one_line_with_the_install_command(monkeypatch, capsys, tmp_path):
    from transformers import LlamaConfig

    d = tmp_path / "m"
    LlamaConfig(max_position_embeddings=512).save_pretrained(d)  # config only: no weights
    monkeypatch.setitem(sys.modules, "kvpress", None)  # `import kvpress` raises ImportError
    code, _, err = run_main(monkeypatch, capsys, "eval", "--model", str(d), "--task",
                            "passkey", "--lengths", "256", "--press", "kvpress:snapkv@0.5",
                            "--out", str(tmp_path / "o"), "--device", "cpu")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "pip install --no-deps kvpress" in err and "older transformers" in err
    with pytest.raises(InputError, match="pip install --no-deps kvpress"):
        K.require_kvpress()


# --- with kvpress: a press end to end ---------------------------------------------------------

@pytest.fixture
def kvpress():
    """kvpress, imported through `require_kvpress` (which undoes its patching of transformers'
    attention functions, so the other tests of this process see them unchanged); skipped
    where it cannot be imported."""
    try:
        K.require_kvpress()
    except InputError:
        pass
    return pytest.importorskip("kvpress")


def test_press_decode_attends_to_the_kept_tokens_at_their_true_positions(kvpress):
    """StreamingLLM at 0.5 keeps the 4 sink tokens and the last ones of the 99 prefilled; the
    first answer step must equal a dense forward whose last query sees only those keys (and
    itself), at the uncompressed position 99."""
    m = tiny_causal_lm("llama", layers=2)
    n = 100
    ids = torch.randint(3, 90, (1, n), generator=torch.Generator().manual_seed(1))
    press = K.build_press(K.parse_press("kvpress:streaming_llm@0.5"))
    with torch.no_grad(), K.press_context(press, m):
        cache = m(input_ids=ids[:, :-1], use_cache=True, logits_to_keep=1).past_key_values
    kept = int((n - 1) * 0.5)
    assert [cache.get_seq_length(i) for i in range(len(cache))] == [kept, kept]
    assert "forward_hook" not in vars(press)  # the press is left as it was
    with torch.no_grad():
        got = m(input_ids=ids[:, -1:], past_key_values=cache,
                position_ids=torch.tensor([[n - 1]])).logits[0, -1]
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        mask[n - 1] = False
        mask[n - 1, :4] = True
        mask[n - 1, n - 1 - (kept - 4):] = True
        ref = m(input_ids=ids, attention_mask=mask[None, None]).logits[0, -1]
        dense = m(input_ids=ids).logits[0, -1]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert (got - dense).abs().max() > 1e-3  # the press did change the answer's logits


def test_import_leaves_attention_functions_as_they_were(kvpress):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa_attention_forward


@pytest.fixture(scope="module")
def tiny(tokenizer):
    """A 2-layer random Llama with the embedded tokenizer's vocabulary (context 512)."""
    return tiny_llama_for(tokenizer)


def test_presses_are_methods_of_the_eval_runner(kvpress, tiny, tokenizer, tmp_path):
    from topkattn.evaluation import read_results, run_eval

    cfg = EvalConfig(tasks=("passkey",), lengths=("256",),
                     ks=("full", "4", "kvpress:snapkv@0", "kvpress:streaming_llm@0.5"),
                     samples=2, max_new_tokens=4, out=tmp_path, progress=False)
    summary = run_eval(tiny, tokenizer, cfg)
    rows = read_results(tmp_path / "results.jsonl")
    by = {(r["sample_id"], r["k"]): r for r in rows}
    assert len(rows) == 2 * 4 and {r["k"] for r in rows} == set(cfg.ks)
    for r in rows:
        if r["k"].startswith("kvpress:"):
            ratio = r["compression_ratio"]
            assert r["press"] in ("snapkv", "streaming_llm") and r["k_value"] is None
            assert r["kv_kept"] == (r["n_tokens"] - 1 if ratio == 0
                                    else int((r["n_tokens"] - 1) * (1 - ratio)))
        # a press that removes nothing decodes what full attention decodes
        if r["k"] == "kvpress:snapkv@0":
            assert r["prediction"] == by[(r["sample_id"], "full")]["prediction"]
    cell = {c.k: c for c in summary.cells}
    assert cell["kvpress:streaming_llm@0.5"].n == 2 and cell["full"].n == 2
    table = (tmp_path / "table.md").read_text()
    assert "| kvpress:snapkv@0 | kvpress:streaming_llm@0.5 |" in table
    # a rerun finds every (sample, method) done: nothing new is written
    run_eval(tiny, tokenizer, cfg)
    assert len(read_results(tmp_path / "results.jsonl")) == len(rows)


def test_press_on_the_command_line(kvpress, tiny, tokenizer, tmp_path):
    import topkattn.cli as cli

    d = tmp_path / "model"
    tiny.save_pretrained(d)
    tokenizer.save_pretrained(d)
    out = tmp_path / "eval"
    r = CliRunner().invoke(cli.app, [
        "eval", "--model", str(d), "--task", "passkey", "--lengths", "256", "--k", "4",
        "--press", "kvpress:knorm@0.5,kvpress:tova@0.5", "--press", "kvpress:knorm@50%",
        "--samples", "1", "--max-new-tokens", "2", "--quiet", "--device", "cpu",
        "--out", str(out)])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "kvpress:knorm@0.5" in r.output and "kvpress:tova@0.5" in r.output
    saved = json.loads((out / "eval_config.json").read_text())
    assert saved["ks"] == ["full", "4", "kvpress:knorm@0.5", "kvpress:tova@0.5"]
    assert (out / "accuracy.png").exists()
