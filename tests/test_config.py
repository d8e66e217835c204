"""TopKConfig validation and k parsing."""

import pytest

from topkattn.config import TopKConfig, TopKConfigError, parse_k


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(k=0), "k must be a positive integer"),
        (dict(k=-1), "k must be a positive integer"),
        (dict(k=2.5), "k must be a positive integer"),
        (dict(k=None, k_ratio=0.0), r"k_ratio must be in \(0, 1\]"),
        (dict(k=None, k_ratio=1.5), r"k_ratio must be in \(0, 1\]"),
        (dict(k=4, k_ratio=0.5), "not both"),
        (dict(phases=("train",)), "phases must be"),
        (dict(phases=()), "phases must be"),
        (dict(sink=-1), "sink must be an integer >= 0"),
        (dict(local=-2), "local must be"),
        (dict(dense_layers=(-1,)), "dense_layers"),
        (dict(granularity="head"), "granularity must be one of"),
        (dict(selector="quest:16"), "selector must be a selector object .*parse_selector\\('quest:16'\\)"),
        (dict(backend="cuda"), "backend must be one of"),
    ],
)
def test_bad_values_name_value_and_allowed(kwargs, match):
    with pytest.raises(TopKConfigError if "selector" not in kwargs else ValueError, match=match):
        TopKConfig(**kwargs)


def test_k_resolution_and_applies_to():
    cfg = TopKConfig(k=None, k_ratio=0.1, phases="prefill", dense_layers=[2], min_context=16)
    assert cfg.phases == ("prefill",) and cfg.dense_layers == (2,)
    assert cfg.k_for(100) == 10 and cfg.k_for(5) == 1 and cfg.k_for(11) == 2
    assert cfg.applies_to(0, "prefill", 100)
    assert not cfg.applies_to(0, "decode", 100)  # phase not sparse
    assert not cfg.applies_to(2, "prefill", 100)  # dense layer
    assert not cfg.applies_to(0, "prefill", 15)  # below min_context
    small = TopKConfig(k=8, sink=2, local=2)
    assert not small.applies_to(0, "decode", 12)  # k + sink + local covers the context: dense
    assert small.applies_to(0, "decode", 13)


def test_parse_k():
    assert parse_k("full") is None
    assert parse_k("64").k == 64
    assert parse_k("0.05").k_ratio == pytest.approx(0.05)
    assert parse_k("5%").k_ratio == pytest.approx(0.05)
    for bad in ("0", "-3", "abc", "1.5", "0%"):
        with pytest.raises(TopKConfigError, match=repr(bad)[1:-1] if bad == "abc" else "k"):
            parse_k(bad)
