"""`edgecnn bench`: several models side by side on one target, with ratios to the first."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgecnn.errors import BadInputError, EdgecnnError
from edgecnn.files.outputs import atomic_path
from edgecnn.targets import get_target
from edgecnn.targets.base import BenchConfig, BenchResult


@dataclass
class BenchReport:
    target: str
    config: BenchConfig
    results: list[BenchResult]
    notes: list[str] = field(default_factory=list)  # rows skipped, and why
    failures: list[str] = field(default_factory=list)  # rows fast but wrong (parity check)
    columns: list[str] = field(default_factory=list)  # the target's table, as it declares it
    wide_columns: list[str] = field(default_factory=list)  # ... with --wide

    def table_columns(self, wide: bool = False) -> list[str]:
        return self.wide_columns if wide else self.columns

    @property
    def passed(self) -> bool:
        """False when a row's outputs failed their check against the reference."""
        return not self.failures

    def rows(self) -> list[dict[str, Any]]:
        base = self.results[0].stats["p50_us"] if self.results else 1.0
        return [{**r.row(), "p50 ratio": r.stats["p50_us"] / base,
                 "speed-up": base / r.stats["p50_us"]} for r in self.results]

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "config": asdict(self.config), "notes": self.notes,
                "failures": self.failures, "passed": self.passed,
                "results": [{**asdict(r), "p50_ratio": row["p50 ratio"]}
                            for r, row in zip(self.results, self.rows(), strict=False)]}


def bench(models: list[Path], target: str, config: BenchConfig = BenchConfig(),
          **target_options: Any) -> BenchReport:
    """Benchmark every model on ``target`` (each applicable runtime, or ``config.runtime``)."""
    if not models:
        raise BadInputError("bench needs at least one model")
    for model in models:
        if not Path(model).is_file():
            raise BadInputError(f"{model}: no such model file")
    batches = {Path(model): _batch_for(Path(model), config.batch) for model in models}
    for model, batch in batches.items():
        check_activations(model, batch)
    adapter = get_target(target, **target_options)
    results: list[BenchResult] = []
    for model, batch in batches.items():
        results += adapter.run(model, replace(config, batch=batch))
    return BenchReport(target, config, results, list(adapter.notes), list(adapter.failures),
                       adapter.table_columns(), adapter.table_columns(wide=True))


def _batch_for(model: Path, asked: int | None) -> int:
    """The batch to bench ``model`` at: its own when it was exported for a fixed one (a batch-1
    export, most exporters' TFLite files); another ``--batch`` would measure a different
    workload than the one asked for, so it is refused up front."""
    from edgecnn.inspection import fixed_batch

    fixed = fixed_batch(model)
    if fixed is not None and asked is not None and asked != fixed:
        raise BadInputError(f"{model}: exported for a fixed batch of {fixed}; bench it with "
                            f"batch={fixed} (or leave `batch` out), or re-export it with a "
                            "free batch", parameters=("batch",))
    return asked or fixed or 1


def check_activations(model: Path, batch: int) -> None:
    """Refuse a batch whose activations would not fit edgecnn's one-array limit, before any
    runtime allocates them: the input alone (313 MB at ``--batch 100000`` of MNIST) passes while
    the first convolution's output needs 1.8 GB."""
    try:
        _check_activation_sizes(model, batch)
    except EdgecnnError as exc:
        exc.parameters = ("batch",)  # the messages name it: the CLI spells it as its flag
        raise


def _check_activation_sizes(model: Path, batch: int) -> None:
    from edgecnn.files.limits import check_allocation
    from edgecnn.files.model_files import load_onnx, read_tflite
    from edgecnn.files.onnx_bounds import check_tensor_sizes

    fix = "bench a smaller `batch`"
    if model.suffix == ".onnx":
        check_tensor_sizes(load_onnx(model), f"{model} at batch={batch}", batch, fix)
    elif model.suffix == ".tflite":
        flatbuffer, _ = read_tflite(model)
        for tensor in flatbuffer.subgraphs[0].tensors or []:
            shape = [int(d) for d in (tensor.shape if tensor.shape is not None else [])]
            signature = tensor.shapeSignature
            if shape and signature is not None and len(signature) and int(signature[0]) == -1:
                shape[0] = batch
            name = tensor.name.decode(errors="replace") if isinstance(tensor.name, bytes) else ""
            check_allocation(f"{model}: tensor {name!r} at batch={batch}", shape, 4, fix)


def plot_latencies(report: BenchReport, path: Path) -> None:
    """Latency distributions side by side (box plots over every timed invoke), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = report.results[0].stats["p50_us"]
    labels = [f"{r.model}\n{r.runtime} b{r.batch}\n{base / r.stats['p50_us']:.2f}x"
              for r in report.results]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(labels)), 4.8))
    # every invoke drawn (outliers too) on a log axis from below the fastest run: the axis never
    # cuts the distribution, so a 2 % difference looks like 2 % and tails stay visible
    ax.boxplot([r.samples_us for r in report.results], showfliers=True,
               flierprops={"markersize": 2, "alpha": 0.4})
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
    ax.set_yscale("log")
    fastest = min(min(r.samples_us) for r in report.results if r.samples_us)
    ax.set_ylim(bottom=fastest / 2)
    ax.set_ylabel("latency per invoke, µs (log scale)")
    ax.set_title(f"edgecnn bench --target {report.target}: every run, speed-up vs the first row",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
