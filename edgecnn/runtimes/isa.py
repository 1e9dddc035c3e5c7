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
from typing import Any


@functools.lru_cache(maxsize=1)
def features() -> frozenset[str]:
    """CPU features numpy detected at run time (CPUID on x86, HWCAP on ARM)."""
    try:
        from numpy.core._multiarray_umath import __cpu_features__ as found
    except ImportError:  # numpy 2 moved it
        from numpy._core._multiarray_umath import __cpu_features__ as found  # type: ignore[attr-defined]
    return frozenset(name for name, present in found.items() if present)


def has_vnni() -> bool:
    """numpy 1.x names AVX-512 VNNI only: an AVX-VNNI CPU (Alder Lake and later) counts as
    without VNNI there, which errs the safe way (the precise u8u8 path, exact and slower)."""
    return bool({"AVX512VNNI", "AVXVNNI", "AVX_VNNI"} & features())


# onnxruntime's session option for x86 without VNNI: s8 weights are moved to u8 when the session
# is built (its Avx2WeightS8ToU8Transformer), so the u8u8 kernels run and nothing saturates. On
# VNNI CPUs it would swap exact fast kernels for slow ones (2-2.4x on resnet18 and mobilenet_v2,
# docs/onnx-int8.md), so it is set only where u8s8 saturates.
ONNXRUNTIME_PRECISE_INT8 = ("session.x64quantprecision", "1")


def u8s8_saturates() -> bool:
    """True on x86 CPUs whose onnxruntime u8 x s8 kernels use VPMADDUBSW (no VNNI)."""
    return cpu_class().startswith("x86-64") and not has_vnni()


def exact_int8_options(options: Any) -> Any:
    """``options`` (onnxruntime SessionOptions) set so full 8-bit int8 weights run exactly on
    this CPU: the precise u8u8 path where u8s8 saturates, untouched elsewhere."""
    if u8s8_saturates():
        options.add_session_config_entry(*ONNXRUNTIME_PRECISE_INT8)
    return options


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
        if onnx_encoding in ("int8", "u8s8") and u8s8_saturates():
            return ("this CPU lacks VNNI, where onnxruntime's u8s8/s8s8 int8 kernels saturate "
                    "(VPMADDUBSW) on 8-bit weights; edgecnn's sessions set "
                    "session.x64quantprecision=1 against it, so compare the qdq-reference row, "
                    "and consider --onnx-int8-encoding u8s7 or uint8 for sessions you do not "
                    "configure")
        return (f"onnxruntime's fused integer kernels round differently on this CPU "
                f"({cpu_class()}); compare its qdq-reference row")
    if runtime == "tflite-runtime":
        return ("TFLite's builtin integer kernels requantise in fixed point: up to one step per "
                "layer; use LiteRT (XNNPACK) for float-rounded requantisation")
    return f"{runtime}'s int8 kernels differ from the QDQ reference on {cpu_class()}"
