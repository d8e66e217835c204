"""Selectors are frozen: a selector inside a TopKConfig cannot change under it."""

import dataclasses
import warnings

import pytest
import torch

from topkattn.selectors import SELECTORS, LightningSelector, make_selector, parse_selector
from topkattn.selectors.base import SelectionContext


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_assigning_a_field_raises(name):
    sel = parse_selector(name)
    assert dataclasses.is_dataclass(sel)
    for f in dataclasses.fields(sel):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(sel, f.name, getattr(sel, f.name))
    with pytest.raises(dataclasses.FrozenInstanceError):
        sel.some_new_attribute = 1


def test_changed_copies_are_validated_and_equal_specs_are_equal():
    sel = parse_selector("precision:0.5,protect=1")
    other = make_selector(sel, p=0.75)
    assert (sel.p, other.p, other.protect) == (0.5, 0.75, 1)
    assert parse_selector("quest:8") == parse_selector("quest:page_size=8")
    with pytest.raises(ValueError, match="page_size"):
        dataclasses.replace(parse_selector("quest"), page_size=0)


def test_lightning_caches_its_random_indexer_outside_the_fields():
    sel = LightningSelector(query_source="query", n_heads=2, head_dim=8)
    q, k = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 10, 16)
    with pytest.warns(UserWarning, match="random indexer"):
        first = sel.select(q, k, SelectionContext(layer_idx=0, topk=3))
    cached = sel._random_indexer
    assert cached is not None and sel.indexer is None  # the field is untouched
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        again = sel.select(q, k, SelectionContext(layer_idx=0, topk=3))
    assert sel._random_indexer is cached and torch.equal(first, again)
    assert "_random_indexer" not in repr(sel)
    assert sel == LightningSelector(query_source="query", n_heads=2, head_dim=8)


@pytest.mark.parametrize("spec", ["precision:0.5", "random"])
def test_copies_do_not_share_the_rng_cache(spec):
    sel = parse_selector(spec)
    q, k = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 30, 8)
    ctx = SelectionContext(topk=4)
    sel.select(q, k, ctx)
    copy = dataclasses.replace(sel)
    assert copy._gen is not sel._gen and not copy._gen
    assert torch.equal(copy.select(q, k, ctx), parse_selector(spec).select(q, k, ctx))
