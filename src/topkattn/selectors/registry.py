"""Selector registry and the one selector spec grammar of the command line.

A spec is ``name`` or ``name:args``, where args is a comma-separated list of ``key=value``
items, optionally led by one bare value for the selector's first field:

    exact                      quest:page_size=16 (= quest:16)
    precision:p=0.8,protect=1  precision:0.8,protect=1,swap=lowest
    spans:max_span=32,represent=bound    lightning:runs/indexer.safetensors
    ltri:max_span=32,retrieval_layers=2;5,boundary=triangle

Values are read as int, float, true/false or else kept as strings, then checked by the
selector's own dataclass. In Python, build the objects directly
(``TopKConfig(selector=QuestSelector(page_size=16))``); strings exist for the command line.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from topkattn.selectors.base import Selector
from topkattn.errors import InputError

#: name -> selector class (a dataclass whose fields are its spec keys)
SELECTORS: dict[str, type[Selector]] = {}


class SelectorSpecError(InputError):
    """A selector spec that names no registered selector, or a bad key or value."""


def register(name: str):
    """Decorator: register a selector class under ``name``."""

    def deco(cls):
        SELECTORS[name] = cls
        return cls

    return deco


def _ensure_loaded() -> None:
    # Importing the package registers the built-in selectors; Ltri's lives in topkattn.ltri.
    import topkattn.selectors  # noqa: F401
    import topkattn.ltri.selector  # noqa: F401  (registers "ltri")


def _value(text: str) -> Any:
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t


def spec_fields(name: str) -> tuple[str, ...]:
    """The keys a selector's spec takes (its public dataclass fields)."""
    _ensure_loaded()
    cls = SELECTORS[name]
    return tuple(f.name for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_"))


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"precision:0.8,protect=1"`` -> ("precision", {"p": 0.8, "protect": 1}). Raises
    `SelectorSpecError` naming an unknown selector or key, or a malformed item."""
    _ensure_loaded()
    if not isinstance(spec, str) or not spec.strip():
        raise SelectorSpecError(f"a selector spec must be a non-empty string; got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if name not in SELECTORS:
        raise SelectorSpecError(f"unknown selector {name!r} in {spec!r}; allowed: "
                                f"{', '.join(sorted(SELECTORS))}")
    keys = spec_fields(name)
    kwargs: dict[str, Any] = {}
    items = [s.strip() for s in rest.split(",")] if rest.strip() else []
    for i, item in enumerate(items):
        key, eq, val = item.partition("=")
        if not eq:
            if i > 0 or not keys:
                raise SelectorSpecError(
                    f"{item!r} in {spec!r} must be key=value ({name} takes "
                    f"{', '.join(keys) if keys else 'no arguments'})")
            key, val = keys[0], item
        key = key.strip()
        if key not in keys:
            raise SelectorSpecError(f"unknown key {key!r} in {spec!r}; {name} takes: "
                                    f"{', '.join(keys) if keys else 'no arguments'}")
        if key in kwargs:
            raise SelectorSpecError(f"{key!r} is given twice in {spec!r}")
        kwargs[key] = _value(val)
    return name, kwargs


def _build(name: str, kwargs: dict[str, Any], spec: str) -> Selector:
    """SELECTORS[name](**kwargs), its own validation errors reported against ``spec``."""
    try:
        return SELECTORS[name](**kwargs)
    except (TypeError, ValueError, FileNotFoundError) as e:
        raise SelectorSpecError(f"selector {spec!r}: {e}") from None


def parse_selector(spec: str) -> Selector:
    """The selector object of a spec (see the module docstring)."""
    return _build(*parse_spec(spec), spec)


def split_specs(text: str) -> list[str]:
    """A comma-separated list of specs -> the specs: an item starts a new spec when it names a
    registered selector and holds no '='; other items belong to the spec before them
    (``"exact,precision:0.5,protect=1,quest"`` -> 3 specs)."""
    _ensure_loaded()
    out: list[str] = []
    for item in (s.strip() for s in str(text).split(",")):
        if not item:
            continue
        head = item.partition(":")[0].strip()
        if "=" not in item.partition(":")[0] and head in SELECTORS or not out:
            out.append(item)
        else:
            out[-1] += "," + item
    return out


def make_selector(spec: str | Selector, **overrides) -> Selector:
    """A selector from a spec string (the command line) or a selector object, with fields
    overridden by keyword (checked like spec keys)."""
    if isinstance(spec, Selector):
        return dataclasses.replace(spec, **overrides) if overrides else spec
    name, kwargs = parse_spec(spec)
    bad = [k for k in overrides if k not in spec_fields(name)]
    if bad:
        raise SelectorSpecError(f"unknown key {bad[0]!r} for {name}; it takes: "
                                f"{', '.join(spec_fields(name)) or 'no arguments'}")
    return _build(name, kwargs | overrides, spec)
