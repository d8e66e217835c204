"""The lm-evaluation-harness model ``topkattn`` on two tiny local tasks (a multiple-choice task
scored by loglikelihood, a generate_until task), on a tiny random Llama with a byte tokenizer:
with k >= every context it gives the dense hf model's results exactly; with a small k the
sparse path runs; bad model arguments stop with one line before the model loads."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("lm_eval")

import lm_eval  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import topkattn.integrations.lm_eval_model as lem  # noqa: E402
from tests.train.conftest import make_tiny_model_dir  # noqa: E402

MC = [{"question": f"Q{i}: what comes after {w}?", "choices": ["apple", "pear", "fig"],
       "answer": i % 3} for i, w in enumerate(["one", "two words", "three more words", "x",
                                               "a longer question about numbers"])]
GEN = [{"prompt": f"Say {w}:", "target": w} for w in ["hi", "hello there", "ok", "yes no"]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model folder, task folder) with the two tasks over local JSONL files."""
    root = tmp_path_factory.mktemp("lmeval")
    model_dir = make_tiny_model_dir(root / "model")
    tasks = root / "tasks"
    tasks.mkdir()
    for name, rows in (("mc", MC), ("gen", GEN)):
        (tasks / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = lambda name: (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: "  # noqa: E731
                         f"{tasks / name}.jsonl\n  cache_dir: {root / 'cache'}\n"
                         "test_split: test\n")
    (tasks / "mc.yaml").write_text(
        "task: topk_tiny_mc\n" + data("mc") + "output_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n")
    (tasks / "gen.yaml").write_text(
        "task: topk_tiny_gen\n" + data("gen") + "output_type: generate_until\n"
        "doc_to_text: '{{prompt}}'\ndoc_to_target: '{{target}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    return str(model_dir), str(tasks)


def _run(model, model_args, tasks_dir, batch_size=3):
    out = lm_eval.simple_evaluate(
        model=model, model_args=model_args, tasks=["topk_tiny_mc", "topk_tiny_gen"],
        batch_size=batch_size, device="cpu", log_samples=True, task_manager=TaskManager(
            include_path=tasks_dir, include_defaults=False))
    return {t: [(s["doc_id"], s["resps"]) for s in sorted(samples, key=lambda s: s["doc_id"])]
            for t, samples in out["samples"].items()}, out


def test_full_k_equals_dense_hf_and_small_k_is_sparse(setup, monkeypatch):
    model_dir, tasks_dir = setup
    dense, _ = _run("hf", f"pretrained={model_dir}", tasks_dir)
    assert len(dense["topk_tiny_mc"]) == len(MC) and len(dense["topk_tiny_gen"]) == len(GEN)

    # k above every context: each attention call is transformers' own SDPA, results bit-equal
    full, out = _run("topkattn", f"pretrained={model_dir},k=100000", tasks_dir)
    assert full == dense
    assert out["config"]["model"] == "topkattn"

    # small k on both phases (the default): the sparse path really runs and changes scores
    seen = []
    real = lem.sparsify

    def counting(model, cfg):
        seen.append(cfg)
        return real(model, cfg)

    monkeypatch.setattr(lem, "sparsify", counting)
    lm = get_model("topkattn").create_from_arg_string(
        f"pretrained={model_dir},k=4,selector=quest:4", {"device": "cpu", "batch_size": 3})
    sparse, _ = _run(lm, None, tasks_dir)
    assert lm.topk_calls["sparse"] > 0
    assert seen and all(c.k == 4 and c.phases == ("decode", "prefill") for c in seen)
    assert type(seen[0].selector).__name__ == "QuestSelector"
    assert sparse["topk_tiny_mc"] != dense["topk_tiny_mc"]
    assert [d for d, _ in sparse["topk_tiny_gen"]] == list(range(len(GEN)))


def test_batched_equals_unbatched_with_exact_topk(setup):
    """Padded batches (right-padded loglikelihood, left-padded generation) under exact Top-k
    give each sample what it gets alone."""
    model_dir, tasks_dir = setup
    args = f"pretrained={model_dir},k=4,selector=exact"
    one, _ = _run("topkattn", args, tasks_dir, batch_size=1)
    batched, _ = _run("topkattn", args, tasks_dir, batch_size=3)
    assert batched == one
    assert len(one["topk_tiny_mc"]) == len(MC) and len(one["topk_tiny_gen"]) == len(GEN)


@pytest.mark.parametrize("args, named", [
    ("k=0", "k=0"), ("k=lots", "'lots'"), ("selector=nope", "'nope'"),
    ("granularity=row", "'row'"), ("dense_layers=a", "'a'"), ("topk_beckend=auto", "topk_beckend"),
])
def test_bad_model_args_fail_in_one_line_before_loading(args, named, monkeypatch):
    def no_load(*a, **k):  # pragma: no cover - reached only if the check came too late
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(lem.HFLM, "__init__", no_load)
    with pytest.raises(lem.ModelArgsError) as e:
        get_model("topkattn").create_from_arg_string(f"pretrained=/nowhere,{args}")
    assert named in str(e.value) and "\n" not in str(e.value)


def test_module_main_runs_lm_eval_cli_with_the_model(setup, monkeypatch, capsys):
    model_dir, tasks_dir = setup
    seen = []
    real = lem.sparsify
    monkeypatch.setattr(lem, "sparsify", lambda model, cfg: seen.append(cfg) or real(model, cfg))
    monkeypatch.setattr(sys, "argv", ["lm_eval"])
    # a comma inside a value, quoted as lm-eval's command line wants it
    lem.main(["--model", "topkattn", "--model_args",
              f'pretrained={model_dir},k=8,selector="quest:page_size=4",phases="prefill,decode"',
              "--tasks", "topk_tiny_mc", "--include_path", tasks_dir, "--device", "cpu",
              "--limit", "2"])
    out = capsys.readouterr().out
    assert "topkattn" in out and "topk_tiny_mc" in out and "acc" in out
    assert seen and seen[0].phases == ("prefill", "decode") and seen[0].selector.page_size == 4


def test_pretrained_default_loads_through_load_model(setup, monkeypatch):
    """``pretrained=default`` goes through `topkattn.models.load_model` (here returning the tiny
    model, so no GGUF is read) and HFLM takes that model and its tokenizer as they are."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import topkattn.models

    model_dir, _ = setup
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    calls = []

    def fake_load(name, dtype=None, device=None):
        calls.append((name, dtype, device))
        return model, tok

    monkeypatch.setattr(topkattn.models, "load_model", fake_load)
    lm = get_model("topkattn").create_from_arg_obj(
        {"pretrained": "default", "k": 4, "dtype": "float32"}, {"device": "cpu"})
    assert calls == [("default", torch.float32, "cpu")]
    assert lm.model is model and lm.tokenizer is tok
    (ll, _), = lm._loglikelihood_tokens(
        [(("", "ab"), tok.encode("hello"), tok.encode(" world"))], disable_tqdm=True)
    assert ll < 0 and lm.topk_calls["sparse"] > 0
    info = lm.get_model_info()
    assert info["topk_pretrained"] == "default" and info["topk_config"]["k"] == 4
