"""Selector registry: one dict mapping names to selector factories.

A selector spec is ``name`` or ``name:arg`` (e.g. ``precision:0.5``); tests, eval, fidelity
and bench all read `SELECTORS`. Modules register themselves with `register`.
"""

from __future__ import annotations

from typing import Callable

from topkattn.selectors.base import Selector

#: name -> factory(arg: str | None, **kwargs) -> Selector
SELECTORS: dict[str, Callable[..., Selector]] = {}


class UnknownSelectorError(ValueError):
    """A selector name that is not registered."""


def register(name: str):
    """Decorator: register a selector factory (or class) under ``name``."""

    def deco(factory):
        SELECTORS[name] = factory
        return factory

    return deco


def _ensure_loaded() -> None:
    # Importing the package registers the built-in selectors.
    import topkattn.selectors  # noqa: F401


def split_spec(spec: str) -> tuple[str, str | None]:
    name, _, arg = spec.partition(":")
    return name.strip(), (arg.strip() or None) if arg else None


def check_selector_name(spec: str) -> None:
    """Raise `UnknownSelectorError` naming the allowed selectors if ``spec`` is unknown."""
    _ensure_loaded()
    if not isinstance(spec, str) or split_spec(spec)[0] not in SELECTORS:
        raise UnknownSelectorError(
            f"unknown selector {spec!r}; allowed: {', '.join(sorted(SELECTORS))}"
        )


def make_selector(spec: str, **kwargs) -> Selector:
    """Build the selector named by ``spec`` ("name" or "name:arg")."""
    check_selector_name(spec)
    name, arg = split_spec(spec)
    factory = SELECTORS[name]
    return factory(arg, **kwargs) if arg is not None else factory(**kwargs)
