"""`topkattn info`: versions, devices, selectors and kernels available here."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info() -> None:
        """Show versions, the device, registered selectors and whether Triton kernels can run."""
        import importlib.util
        import platform

        import torch
        from rich.console import Console
        from rich.table import Table

        import topkattn
        from topkattn.selectors import SELECTORS

        table = Table(title="topkattn", show_header=False)
        table.add_row("topkattn", topkattn.__version__)
        table.add_row("python", platform.python_version())
        table.add_row("torch", torch.__version__)
        for pkg in ("transformers", "triton"):
            spec = importlib.util.find_spec(pkg)
            version = "not installed"
            if spec is not None:
                from importlib.metadata import version as v

                version = v(pkg)
            table.add_row(pkg, version)
        cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU reference)"
        table.add_row("CUDA device", cuda)
        from topkattn.ops.topk import env_backend

        table.add_row("TOPKATTN_BACKEND", env_backend() or "unset")
        has_triton = importlib.util.find_spec("triton") is not None
        kernels = (
            "Triton on CUDA" if has_triton and torch.cuda.is_available()
            else "reference only (Triton kernels need CUDA, or TRITON_INTERPRET=1 for tests)"
        )
        table.add_row("kernels", kernels)
        table.add_row("selectors", ", ".join(sorted(SELECTORS)))
        try:
            from topkattn.models import embedded_model_file

            table.add_row("embedded model", str(embedded_model_file()))
        except FileNotFoundError as e:
            table.add_row("embedded model", str(e))
        Console().print(table)
