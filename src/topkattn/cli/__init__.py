"""The `topkattn` command line (a typer app).

Each subcommand lives in its own module ``topkattn.cli.<name>_cmd`` that defines
``register(app: typer.Typer) -> None``; this package discovers them, so adding a command never
touches another command's file. Bad input raises a `topkattn.errors.TopkattnError` (`CLIError`
here, or the library's own), printed as one line ``error: ...`` with exit code 2; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from topkattn.errors import InputError, TopkattnError

app = typer.Typer(
    name="topkattn",
    help="Top-k sparse attention for Hugging Face causal LMs: evaluate, measure fidelity and "
    "entropy, train natively with top-k, and benchmark GPU kernels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class CLIError(InputError):
    """Bad command-line input: printed as one line, exit code 2."""


@app.callback()
def _root() -> None:
    """Top-k sparse attention for Hugging Face causal LMs."""
    from topkattn.ops.topk import env_backend

    env_backend()  # a bad TOPKATTN_BACKEND stops every command, with the allowed values


def _register_commands() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.endswith("_cmd"):
            importlib.import_module(f"{__name__}.{info.name}").register(app)


_register_commands()


def main() -> None:
    """Entry point: run the app, turning bad-input errors into one line and exit code 2."""
    try:
        app()  # click handles usage errors (exit 2) and --help itself
    except TopkattnError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished results are kept; rerun the same command to resume",
              file=sys.stderr)
        sys.exit(130)


__all__ = ["CLIError", "app", "main"]
