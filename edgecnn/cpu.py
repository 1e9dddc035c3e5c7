"""Which class of CPU this is, as far as int8 kernels care, and why a runtime strays on it.

onnxruntime picks its integer GEMM by instruction set: VNNI (VPDPBUSD) accumulates u8 x s8
products in 32 bits; plain AVX2 uses VPMADDUBSW, whose int16 pair sums saturate when int8
weights use their full range; u8 x u8 widens to 16 bits first and never saturates. So one int8
model can be exact on one laptop and 32 steps off on the next. The features come from numpy's
runtime CPUID dispatch, so an emulated CPU (qemu ``-cpu Haswell``) reports what it emulates.
"""

from __future__ import annotations

import functools
import platform


@functools.lru_cache(maxsize=1)
def features() -> frozenset[str]:
    """CPU features numpy detected at run time (CPUID on x86, HWCAP on ARM)."""
    try:
        from numpy.core._multiarray_umath import __cpu_features__ as found
    except ImportError:  # numpy 2 moved it
        from numpy._core._multiarray_umath import __cpu_features__ as found  # type: ignore[attr-defined]
    return frozenset(name for name, present in found.items() if present)


def has_vnni() -> bool:
    return bool({"AVX512VNNI", "AVXVNNI", "AVX_VNNI"} & features())


def cpu_class() -> str:
    """A short name for the int8-relevant class of this CPU, e.g. ``x86-64 AVX2 (no VNNI)``."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "aarch64" + (" dotprod" if "ASIMDDP" in features() else "")
    if machine in ("x86_64", "amd64"):
        if "AVX512VNNI" in features():
            return "x86-64 AVX-512 VNNI"
        if has_vnni():
            return "x86-64 AVX-VNNI"
        if "AVX2" in features():
            return "x86-64 AVX2 (no VNNI)"
        return "x86-64 (no AVX2)"
    return machine or "unknown"


def int8_stray_reason(runtime: str, onnx_encoding: str | None) -> str:
    """One line a user can act on when ``runtime``'s int8 output strays from the QDQ reference."""
    if runtime == "onnxruntime":
        if onnx_encoding == "int8" and cpu_class().startswith("x86-64") and not has_vnni():
            return ("this CPU lacks VNNI: onnxruntime's u8s8/s8s8 int8 kernels saturate "
                    "(VPMADDUBSW); convert with --onnx-int8-encoding uint8 (the default)")
        return (f"onnxruntime's fused integer kernels round differently on this CPU "
                f"({cpu_class()}); compare its qdq-reference row")
    if runtime == "tflite-runtime":
        return ("TFLite's builtin integer kernels requantise in fixed point: up to one step per "
                "layer; use LiteRT (XNNPACK) for float-rounded requantisation")
    return f"{runtime}'s int8 kernels differ from the QDQ reference on {cpu_class()}"
