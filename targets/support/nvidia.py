"""What nvidia-smi says of the GPU torch uses: driver, clocks, temperature, power, and why the
clocks are held back. Read before and after each timed row, so a number comes with the clock
state it was measured at; empty wherever nvidia-smi is missing."""

from __future__ import annotations

import shutil
import subprocess

CLOCK_FIELDS = ("clocks.sm", "clocks.mem", "clocks.max.sm", "temperature.gpu", "power.draw",
                "pstate")
# renamed in driver 535; the old name is an alias there. One bad field fails a whole query,
# so the reasons are asked for on their own
THROTTLE_FIELDS = ("clocks_event_reasons.active", "clocks_throttle_reasons.active")


def nvidia_smi(fields: tuple[str, ...]) -> dict[str, str]:
    """torch's GPU 0's ``fields`` from nvidia-smi (by UUID: nvidia-smi's own numbering ignores
    CUDA_VISIBLE_DEVICES); empty where nvidia-smi is missing or refuses a field."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    gpu = "0"
    try:
        import torch

        gpu = f"GPU-{torch.cuda.get_device_properties(0).uuid}"
    except (ImportError, RuntimeError, AttributeError, AssertionError):
        pass
    try:
        done = subprocess.run([exe, f"--query-gpu={','.join(fields)}",
                               "--format=csv,noheader,nounits", f"--id={gpu}"],
                              capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return {}
    lines = done.stdout.strip().splitlines()
    values = [v.strip() for v in lines[0].split(",")] if lines else []
    return dict(zip(fields, values, strict=False))


def gpu_clocks() -> dict[str, str]:
    """SM and memory clocks, temperature, power, P-state and why clocks are held back."""
    state = nvidia_smi(CLOCK_FIELDS)
    for field in THROTTLE_FIELDS:
        reasons = nvidia_smi((field,))
        if reasons:
            state["clock_event_reasons"] = reasons[field]
            break
    return state
