"""The target interface: probe the environment, run a measured session, return a record."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from edgecnn.errors import ParameterError

MAX_RUNS = 10_000_000
MAX_TIME_CEILING_S = 24 * 3600.0


@dataclass(frozen=True)
class BenchConfig:
    runtime: str | None = None
    threads: int | None = None
    batch: int | None = None  # None: the model's own fixed batch, else 1 (see edgecnn.bench)
    warmup: int = 10
    runs: int = 100
    min_time: float = 1.0
    max_time: float = 300.0  # ceiling per model and runtime, warm-up included
    image_shape: tuple[int, ...] | None = None  # C, H, W for models with symbolic image dims

    def __post_init__(self) -> None:
        if (self.batch is not None and self.batch < 1) or self.runs < 1 or self.warmup < 0:
            raise ParameterError("`batch` and `runs` must be >= 1; `warmup` >= 0", "batch", "runs",
                                 "warmup")
        if not 0 <= self.min_time <= self.max_time <= MAX_TIME_CEILING_S:
            raise ParameterError(f"need 0 <= `min_time` <= `max_time` <= {MAX_TIME_CEILING_S:g} s "
                                 f"(got {self.min_time:g} and {self.max_time:g})", "min_time",
                                 "max_time")
        if self.runs > MAX_RUNS or self.warmup > MAX_RUNS:
            raise ParameterError(f"`runs` and `warmup` are capped at {MAX_RUNS:,}; `max_time` bounds "
                                 "the wall time", "runs", "warmup", "max_time")
        if self.threads is not None and not 1 <= self.threads <= 1024:
            raise ParameterError(f"threads={self.threads}: give 1..1024, or leave it out",
                                 "threads")


@dataclass
class BenchResult:
    model: str
    target: str
    runtime: str
    batch: int
    file_size_kib: float
    load_ms: float
    first_ms: float
    stats: dict[str, float]
    peak_rss_mb: float
    samples_us: list[float] = field(default_factory=list, repr=False)
    device: dict[str, Any] = field(default_factory=dict)
    # GPU rows: time on the GPU from CUDA events (``stats`` is host wall time, launch to sync),
    # peak GPU memory (allocated by tensors, reserved by the caching allocator), the parity
    # pre-check against the CPU fp32 reference, and how many warm-up runs the clocks took
    gpu_stats: dict[str, float] | None = None
    gpu_memory_mb: dict[str, float] | None = None
    parity: dict[str, Any] | None = None
    warmup_runs: int | None = None
    # a target's own columns (an NPU's operator share and memory, an MCU's arena and parity)
    columns: dict[str, Any] = field(default_factory=dict)

    def with_gpu_columns(self) -> BenchResult:
        """This row with a GPU's columns (time from CUDA events, memory, the parity pre-check,
        warm-up runs) added to ``columns``."""
        gpu, memory, parity = self.gpu_stats or {}, self.gpu_memory_mb or {}, self.parity or {}
        self.columns.update({
            "GPU p50 µs": gpu.get("p50_us", ""), "GPU p99 µs": gpu.get("p99_us", ""),
            "GPU alloc MB": memory.get("allocated", ""),
            "GPU reserved MB": memory.get("reserved", ""),
            "max rel err": parity.get("max_rel_error", ""),
            "warm-up runs": "" if self.warmup_runs is None else self.warmup_runs})
        return self

    def row(self) -> dict[str, Any]:
        s = self.stats
        return {"model": self.model, "target": self.target, "runtime": self.runtime,
                "batch": self.batch, "size KiB": round(self.file_size_kib, 1),
                "load ms": self.load_ms, "first ms": self.first_ms, "p50 µs": s["p50_us"],
                "mean µs": s["mean_us"], "std µs": s["std_us"], "p90 µs": s["p90_us"],
                "p99 µs": s["p99_us"], "min µs": s["min_us"], "max µs": s["max_us"],
                "runs": s["runs"], "img/s": s["throughput_ips"], "peak RSS MB": self.peak_rss_mb,
                **self.columns}


class Target(ABC):
    """One place models run: the host CPU, a CUDA GPU, a Raspberry Pi, an Ethos-U NPU (compiled
    and estimated by Vela), a microcontroller (TFLite Micro's kernels).

    A target is one module in ``targets/`` whose ``TARGET`` is a subclass of this: its
    constructor's keyword arguments are its options (``edgecnn bench`` refuses an option no
    target of that name takes), and its table, notes and failures are declared here, so adding
    a target touches nothing outside its module.
    """

    name: ClassVar[str]
    # the bench table's columns, by default and with --wide (keys of BenchResult.row())
    columns: ClassVar[tuple[str, ...]] = (
        "model", "runtime", "batch", "p50 µs", "p99 µs", "img/s", "size KiB", "peak RSS MB",
        "speed-up")
    wide_columns: ClassVar[tuple[str, ...]] = (
        "model", "runtime", "batch", "size KiB", "load ms", "first ms", "p50 µs", "mean µs",
        "std µs", "p90 µs", "p99 µs", "min µs", "max µs", "img/s", "peak RSS MB", "p50 ratio")

    def __init__(self) -> None:
        self.notes: list[str] = []  # rows skipped, and why: printed, not a failure
        self.failures: list[str] = []  # rows that failed a check: bench exits 1

    @classmethod
    def table_columns(cls, wide: bool = False) -> list[str]:
        return list(cls.wide_columns if wide else cls.columns)

    @abstractmethod
    def probe(self) -> dict[str, Any]:
        """Describe the device and list the runtimes available there."""

    @abstractmethod
    def run(self, model: Path, config: BenchConfig) -> list[BenchResult]:
        """Benchmark ``model`` on every applicable runtime (or ``config.runtime``)."""
