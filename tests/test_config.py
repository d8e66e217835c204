"""TopKConfig validation and k parsing."""

import pytest

from topkattn.config import (TopKConfig, TopKConfigError, check_k, parse_k, parse_k_list,
                             selector_spec)


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


def test_parse_k_returns_plain_values():
    assert parse_k("full") == (None, None) and parse_k("dense").dense
    assert parse_k("64") == (64, None) and type(parse_k("64").k) is int
    assert parse_k("0.05") == (None, pytest.approx(0.05))
    assert parse_k("5%") == (None, pytest.approx(0.05))
    assert parse_k(" 5% ").k_ratio == pytest.approx(0.05)
    assert not isinstance(parse_k("64"), TopKConfig)
    # the values go into a config as they are
    assert TopKConfig(k=None, sink=2).with_(**parse_k("8")._asdict()).k == 8


def test_parse_k_list():
    assert parse_k_list("8,full,5%,8") == [("8", (8, None)), ("full", (None, None)),
                                           ("5%", (None, pytest.approx(0.05)))]
    assert parse_k_list(["16", " 64 "]) == [("16", (16, None)), ("64", (64, None))]
    with pytest.raises(TopKConfigError, match="'abc'"):
        parse_k_list("8,abc")


@pytest.mark.parametrize("bad,match", [
    ("0", r"k must be a positive integer \(k >= 1\), got k=0 \(from k '0'\)"),
    ("-3", r"got k=-3 \(from k '-3'\)"),
    ("abc", r"a ratio in \(0, 1\] such as 0.05 or 5%, or 'full'; got 'abc'"),
    ("1.5", r"k_ratio must be in \(0, 1\], got k_ratio=1.5 \(from k '1.5'\)"),
    ("0%", r"got k_ratio=0.0 \(from k '0%'\)"),
])
def test_parse_k_bad_values_name_the_value(bad, match):
    with pytest.raises(TopKConfigError, match=match):
        parse_k(bad)


def test_check_k_is_the_rule_of_the_config():
    for k, r in ((0, None), (None, 0.0), (3, 0.5), (True, None)):
        with pytest.raises(TopKConfigError):
            check_k(k, r)
        with pytest.raises(TopKConfigError):
            TopKConfig(k=k, k_ratio=r)
    check_k(None, None)
    check_k(1, None)


def test_to_json_and_labels():
    from topkattn.selectors import QuestSelector, parse_selector

    cfg = TopKConfig(k=None, k_ratio=0.25, dense_layers=[1], selector=QuestSelector(page_size=8))
    d = cfg.to_json()
    assert d["selector"] == "quest:page_size=8" and d["dense_layers"] == [1]
    assert parse_selector(d["selector"]) == cfg.selector  # the spec reads back
    assert cfg.k_label == "0.25" and TopKConfig(k=7).k_label == "7"
    assert TopKConfig(k=None).k_label == "full" and TopKConfig().to_json()["selector"] == "exact"
    assert selector_spec(parse_selector("precision:0.5,protect=1")) == "precision:p=0.5,protect=1"


def test_decode_decision_names_what_a_step_does():
    from topkattn import TopKConfig

    cfg = TopKConfig(k=8, min_context=20, dense_layers=(1,))
    assert cfg.decode_decision(19) == (False,)  # below min_context
    assert cfg.decode_decision(20) == (True, 8)
    assert cfg.decode_decision(20, layer_idx=1) == (False,)  # a dense layer
    assert cfg.decode_decision(8) == (False,)
    assert TopKConfig(k=None, k_ratio=0.25).decode_decision(400) == (True, 100)
    assert TopKConfig(k=None).decode_decision(400) == (False,)
