"""Bad input at the configuration entry points of the Python API: `TopKConfig` and the
selector specs (`make_selector`, `parse_selector`). Each case must raise a `TopkattnError`
(the one error type of users' mistakes) with one line naming the bad value. The ops, devices,
models and output paths are in tests/test_reliability.py."""

from __future__ import annotations

import pytest

from topkattn import TopKConfig, make_selector, parse_selector
from topkattn.errors import TopkattnError

NAN = float("nan")

CASES = [
    # (id, call, text the message must contain)
    ("topk-k-zero", lambda: TopKConfig(k=0), "k=0"),
    ("topk-k-negative", lambda: TopKConfig(k=-5), "k=-5"),
    ("topk-k-float", lambda: TopKConfig(k=2.5), "2.5"),
    ("topk-k-bool", lambda: TopKConfig(k=True), "True"),
    ("topk-k-string", lambda: TopKConfig(k="64"), "'64'"),
    ("topk-ratio-zero", lambda: TopKConfig(k=None, k_ratio=0.0), "k_ratio=0.0"),
    ("topk-ratio-above-one", lambda: TopKConfig(k=None, k_ratio=1.5), "k_ratio=1.5"),
    ("topk-ratio-nan", lambda: TopKConfig(k=None, k_ratio=NAN), "k_ratio=nan"),
    ("topk-k-and-ratio", lambda: TopKConfig(k=4, k_ratio=0.5), "k=4, k_ratio=0.5"),
    ("topk-phases-misspelt", lambda: TopKConfig(phases="prefil"), "got 'prefil'"),
    ("topk-phases-unknown", lambda: TopKConfig(phases=("decode", "x")), "'x'"),
    ("topk-phases-empty", lambda: TopKConfig(phases=()), "got ()"),
    ("topk-sink-negative", lambda: TopKConfig(sink=-1), "sink=-1"),
    ("topk-local-float", lambda: TopKConfig(local=1.5), "local=1.5"),
    ("topk-dense-layers-negative", lambda: TopKConfig(dense_layers=(-1,)), "(-1,)"),
    ("topk-dense-layers-string", lambda: TopKConfig(dense_layers="a"), "'a'"),
    ("topk-min-context-negative", lambda: TopKConfig(min_context=-3), "min_context=-3"),
    ("topk-granularity", lambda: TopKConfig(granularity="rows"), "'rows'"),
    ("topk-backend", lambda: TopKConfig(backend="cuda"), "'cuda'"),
    ("topk-selector-int", lambda: TopKConfig(selector=42), "got 42"),
    ("topk-selector-string", lambda: TopKConfig(selector="bogus"), "'bogus'"),
    ("selector-unknown", lambda: make_selector("bogus"), "'bogus'"),
    ("selector-empty", lambda: make_selector(""), "''"),
    ("selector-not-a-string", lambda: make_selector(5), "got 5"),
    ("selector-key-typo", lambda: make_selector("precision:0.5,protct=1"), "'protct'"),
    ("selector-override-typo", lambda: make_selector("precision:0.5", protct=1), "'protct'"),
    ("selector-argument-to-exact", lambda: make_selector("exact:false"), "'false'"),
    ("selector-precision-range", lambda: make_selector("precision:1.5"), "1.5"),
    ("selector-precision-text", lambda: make_selector("precision:abc"), "'abc'"),
    ("selector-window-negative", lambda: make_selector("window:-3"), "-3"),
    ("selector-random-seed", lambda: make_selector("random:x"), "'x'"),
    ("selector-quest-page-zero", lambda: make_selector("quest:0"), "got 0"),
    ("selector-spans-negative", lambda: make_selector("spans:-1"), "-1"),
    ("selector-lightning-missing", lambda: make_selector("lightning:/nope.safetensors"),
     "'/nope.safetensors'"),
    ("selector-double-colon", lambda: parse_selector("precision::0.5"), "':0.5'"),
    ("selector-key-without-value", lambda: parse_selector("precision:0.5,protect"),
     "'protect'"),
    ("selector-ltri-unknown-key", lambda: parse_selector("ltri:budget=-1"), "'budget'"),
]


@pytest.mark.parametrize("call, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_or_selector_is_one_named_line(call, needle):
    with pytest.raises(TopkattnError) as info:
        call()
    msg = str(info.value)
    assert needle in msg, msg
    assert "\n" not in msg and len(msg) < 400, msg


def test_a_lightning_path_that_is_not_weights_is_one_line(tmp_path):
    for name in ("w.safetensors", "w.pt"):
        f = tmp_path / name
        f.write_text("not weights")
        with pytest.raises(TopkattnError) as info:
            make_selector(f"lightning:{f}")
        assert str(f) in str(info.value) and "\n" not in str(info.value)
