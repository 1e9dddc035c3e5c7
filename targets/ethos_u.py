"""Arm Ethos-U NPUs: the file compiled by Arm's Vela compiler (``pip install ethos-u-vela``,
the ``npu`` extra) for a named configuration, and Vela's own performance estimate.

Nothing runs: an Ethos-U sits beside a Cortex-M, and Vela is what decides whether a file runs
there at all. Its default compiler refuses a file holding an integer-graph op with a float input
(our float islands); its legacy core (U55 and U65 only) places such ops on the Cortex-M instead.
A row reports the share of operators on the NPU, the ones left on the CPU by name, SRAM and flash
use, MACs and Vela's estimated inference time; a refusal by the default compiler fails the
bench (exit 1) with Vela's reason, and a legacy-core row follows where there is one.

Vela runs in a subprocess: a crafted file may crash a native compiler, never edgecnn.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecnn.errors import BadInputError, TargetUnavailableError
from edgecnn.targets.base import BenchConfig, BenchResult, Target

# Vela's accelerator configurations, by the names Arm's datasheets use (U55-128 = ethos-u55-128)
ACCELERATORS = ("U55-32", "U55-64", "U55-128", "U55-256", "U65-256", "U65-512", "U85-128",
                "U85-256", "U85-512", "U85-1024", "U85-2048")
LEGACY_CORE = ("U55", "U65")  # the configurations whose legacy compiler places ops on the CPU
DEFAULT_ACCELERATOR = "U55-128"
VELA_TIMEOUT_S = 900.0


def accelerator(name: str) -> str:
    """``U55-128``, ``u55-128`` or ``ethos-u55-128`` as Vela's ``ethos-u55-128``."""
    short = name.strip().upper().removeprefix("ETHOS-")
    if short not in ACCELERATORS:
        raise BadInputError(f"--npu {name!r}: choose from {', '.join(ACCELERATORS)}")
    return f"ethos-{short.lower()}"


@dataclass
class VelaResult:
    """One compile: the summary Vela writes, the operators it left on the CPU, or its refusal."""

    accelerator: str
    legacy: bool
    refusal: str | None = None
    npu_ops: int = 0
    cpu_ops: int = 0
    cpu_op_names: Counter[str] = field(default_factory=Counter)
    summary: dict[str, float] = field(default_factory=dict)

    @property
    def npu_share(self) -> float:
        total = self.npu_ops + self.cpu_ops
        return 100.0 * self.npu_ops / total if total else 0.0


def require_vela() -> None:
    if importlib.util.find_spec("ethosu") is None:
        raise TargetUnavailableError("Arm's Vela compiler is not installed: pip install "
                                     "'edgecnn[npu]' (ethos-u-vela)")


def compile_with_vela(model: Path, accel: str, legacy: bool = False) -> VelaResult:
    """Compile ``model`` for ``accel`` (Vela's name) in a subprocess and read what it wrote."""
    require_vela()
    with tempfile.TemporaryDirectory(prefix="edgecnn-vela-") as tmp:
        command = [sys.executable, "-m", "ethosu.vela", str(model.resolve()),
                   "--accelerator-config", accel, "--output-dir", tmp]
        if legacy:
            command.append("--debug-force-legacy-core")
        try:
            done = subprocess.run(command, capture_output=True, text=True, cwd=tmp,
                                  timeout=VELA_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BadInputError(f"{model}: Vela did not finish compiling for {accel} in "
                                f"{VELA_TIMEOUT_S:g} s") from None
        log = done.stdout + "\n" + done.stderr
        result = VelaResult(accel, legacy)
        if done.returncode != 0:
            if not re.search(r"Error: \w+ '", log):  # not a verdict on the file: Vela failed
                raise TargetUnavailableError(f"{model}: Vela failed for {accel} without naming "
                                             f"an op: {refusal_reason(log)}")
            result.refusal = refusal_reason(log)
            return result
        result.npu_ops, result.cpu_ops = _operator_counts(log)
        result.summary = _summary(Path(tmp))
        compiled = next(Path(tmp).glob("*_vela.tflite"), None)
        if compiled is not None:
            result.cpu_op_names = cpu_operators(compiled)
    return result


def refusal_reason(log: str) -> str:
    """Vela's first error in one line: ``HARD_SWISH 'hardswish/float': IFM has to be 8bit
    (IFM type=FLOAT32)``."""
    lines = [line.strip() for line in log.splitlines()]
    for index, line in enumerate(lines):
        found = re.search(r"Error: (\w+) '([^']*)'", line)
        if found:
            details = [d.lstrip("- ").strip(", ") for d in lines[index + 1:index + 3]
                       if d and not d.startswith(("Failed", "Traceback", "Error"))]
            reason = details[0] if details else line.split("'", 2)[-1].strip()
            extra = f" ({details[1]})" if len(details) > 1 else ""
            return f"{found.group(1)} '{found.group(2)}': {reason}{extra}"
    errors = [line for line in lines if "Error" in line]
    return (errors[-1] if errors else "Vela exited with an error")[:300]


def _operator_counts(log: str) -> tuple[int, int]:
    def count(kind: str) -> int:
        found = re.search(rf"{kind} operators = (\d+)", log)
        return int(found.group(1)) if found else 0
    return count("NPU"), count("CPU")


def _summary(folder: Path) -> dict[str, float]:
    table = next(folder.glob("*_summary_*.csv"), None)
    if table is None:
        return {}
    with open(table, newline="") as handle:
        row = next(csv.DictReader(handle), {})
    numbers = {}
    for key in ("inference_time", "inferences_per_second", "sram_memory_used", "dram_memory_used",
                "on_chip_flash_memory_used", "off_chip_flash_memory_used", "nn_macs",
                "cycles_total"):
        try:
            numbers[key] = float(row.get(key, "nan"))
        except ValueError:
            numbers[key] = float("nan")
    return numbers


def cpu_operators(compiled: Path) -> Counter[str]:
    """Operators Vela left for the Cortex-M: everything in its output but its ethos-u ops."""
    from edgecnn.converters.tflite_schema import op_name
    from edgecnn.files.model_files import read_tflite

    model, _ = read_tflite(compiled)
    names: Counter[str] = Counter()
    for op in model.subgraphs[0].operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = op_name(max(code.builtinCode, code.deprecatedBuiltinCode))
        custom = code.customCode.decode(errors="replace") if isinstance(
            code.customCode, bytes) else (code.customCode or "")
        if name == "CUSTOM" and custom == "ethos-u":
            continue
        names[name] += 1
    return names


class EthosUTarget(Target):
    name = "ethos-u"
    # compiled, not run: Vela's estimate and memory
    columns = ("model", "runtime", "NPU ops %", "CPU ops", "est. µs", "SRAM KiB", "flash KiB",
               "DRAM KiB", "compiler")
    wide_columns = (*columns[:-1], "MACs", "size KiB", "compiler")

    def __init__(self, npu: tuple[str, ...] | str = (DEFAULT_ACCELERATOR,)) -> None:
        """``npu``: Vela configurations, each entry possibly comma-separated (U55-128,U85-256)."""
        super().__init__()  # failures: files the default compiler refuses
        names = [n.strip() for given in ((npu,) if isinstance(npu, str) else npu)
                 for n in given.split(",") if n.strip()]
        self.accelerators = [accelerator(n) for n in names or (DEFAULT_ACCELERATOR,)]

    def probe(self) -> dict[str, Any]:
        require_vela()
        from importlib.metadata import version

        return {"compiler": f"vela {version('ethos-u-vela')}", "accelerators": self.accelerators}

    def run(self, model: Path, config: BenchConfig) -> list[BenchResult]:
        from edgecnn.files.model_files import read_tflite

        if model.suffix.lower() != ".tflite":
            raise BadInputError(f"{model}: --target ethos-u compiles int8 .tflite files; write "
                                "one with `edgecnn convert MODEL --to tflite --int8`")
        read_tflite(model)  # bounds-checked before Vela parses it
        device = self.probe()
        results = []
        for accel in self.accelerators:
            compiled = compile_with_vela(model, accel)
            if compiled.refusal is not None:
                legacy = accel.removeprefix("ethos-").upper().startswith(LEGACY_CORE)
                self.failures.append(
                    f"{model.name}: Vela refuses it for {accel}: {compiled.refusal}; the NPU "
                    "takes integer-only files: convert with --for npu"
                    + (" (the legacy-core row below runs the float ops on the Cortex-M)"
                       if legacy else ""))
                if not legacy:
                    continue
                compiled = compile_with_vela(model, accel, legacy=True)
                if compiled.refusal is not None:
                    self.notes.append(f"{model.name}: Vela's legacy core refuses it for {accel} "
                                      f"too: {compiled.refusal}")
                    continue
            results.append(self._row(model, compiled, device))
        return results

    def _row(self, model: Path, compiled: VelaResult, device: dict[str, Any]) -> BenchResult:
        s = compiled.summary
        estimate_us = 1e6 * s.get("inference_time", float("nan"))
        stats = {key: estimate_us for key in ("mean_us", "p50_us", "p90_us", "p99_us", "min_us",
                                              "max_us")}
        stats.update(std_us=0.0, runs=1, throughput_ips=s.get("inferences_per_second", 0.0))
        flash = s.get("off_chip_flash_memory_used", 0.0) + s.get("on_chip_flash_memory_used", 0.0)
        columns = {
            "NPU ops %": round(compiled.npu_share, 1),
            "CPU ops": ", ".join(f"{op} x{n}" for op, n in compiled.cpu_op_names.most_common()),
            "est. µs": round(estimate_us, 1),
            "SRAM KiB": round(s.get("sram_memory_used", float("nan")), 2),
            "flash KiB": round(flash, 2), "DRAM KiB": round(s.get("dram_memory_used", 0.0), 2),
            "MACs": int(s.get("nn_macs", 0)),
            "compiler": "legacy core" if compiled.legacy else "default"}
        return BenchResult(model.name, self.name, f"vela:{compiled.accelerator}", 1,
                           model.stat().st_size / 1024, 0.0, 0.0, stats, 0.0,
                           device={**device, "accelerator": compiled.accelerator},
                           columns=columns)


TARGET = EthosUTarget
