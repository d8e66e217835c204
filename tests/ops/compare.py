"""Shared helpers of the kernel tests: tolerances, relative RMS error, the test device."""

import torch

# relative RMS tolerances: fp32 exact math; fp16/bf16 from P@V in low precision + output rounding
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def rel_rms(a, b, floor: float = 0.0) -> float:
    """||a - b||_rms / ||b||_rms; the absolute error when ||b||_rms <= floor."""
    a, b = a.float(), b.float()
    den = b.pow(2).mean().sqrt().item()
    num = (a - b).pow(2).mean().sqrt().item()
    return num / den if den > floor else num


def dev() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
