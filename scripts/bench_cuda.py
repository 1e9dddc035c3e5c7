"""docs/cuda.md's table: `edgecnn bench --target cuda` against a bare CUDA-graph loop, same run.

For each case (model, batch, precision) it runs the bench API with every default row, then an
independent loop written here with nothing but torch: channels_last, cuDNN autotuning, one
CUDA graph captured and replayed, each replay timed by host clock and by CUDA events. Two
figures follow (issue 13): the best bench row within 1.15x of the bare loop, and the harness's
own overhead (its graph row against the bare loop, same precision) within 5 % on VGG19 b1::

    python scripts/bench_cuda.py --vgg19 /tmp/vgg19.pt --torchvision /tmp/resnet50.pt2

Needs a CUDA GPU; writes docs/cuda.json and prints the Markdown rows for docs/cuda.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def bare_graph_loop(path: Path, batch: int, precision: str, runs: int = 300) -> dict[str, float]:
    """The fastest way to run ``path`` that torch offers, timed without edgecnn's harness."""
    import numpy as np
    import torch

    from edgecnn.files.torch_files import load_torch_model
    from edgecnn.runtimes.placements import move_module

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    model = load_torch_model(path)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    module = move_module(model.module, "cuda", dtype).to(memory_format=torch.channels_last)
    x = torch.rand(batch, *model.card.input.shape, device="cuda", dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(20):
                module(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            module(x)
    for _ in range(200):
        graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    wall, gpu = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        wall.append((time.perf_counter() - t0) * 1e6)
        gpu.append(start.elapsed_time(end) * 1e3)
    return {"wall_p50_us": float(np.median(wall)), "gpu_p50_us": float(np.median(gpu))}


def case(path: Path, batch: int, precision: str, input_shape: tuple[int, ...] | None
         ) -> dict[str, Any]:
    from edgecnn.bench import bench
    from edgecnn.targets.base import BenchConfig

    config = BenchConfig(runtime=f"torch-cuda:{precision}*", batch=batch, runs=300,
                         min_time=2.0, image_shape=input_shape)
    report = bench([path], "cuda", config)
    rows = {r.runtime: r for r in report.results}
    bare = bare_graph_loop(path, batch, precision)
    graph = rows.get(f"torch-cuda:{precision}:graph")
    best = min(rows.values(), key=lambda r: r.stats["p50_us"])
    return {"model": path.name, "batch": batch, "precision": precision,
            "rows": {name: {"p50_us": r.stats["p50_us"], "p90_us": r.stats["p90_us"],
                            "p99_us": r.stats["p99_us"], "min_us": r.stats["min_us"],
                            "gpu_p50_us": (r.gpu_stats or {}).get("p50_us"),
                            "gpu_memory_mb": r.gpu_memory_mb, "parity": r.parity}
                     for name, r in rows.items()},
            "bare_graph": bare, "device": best.device, "notes": report.notes,
            "best_row": best.runtime,
            "best_vs_bare": best.stats["p50_us"] / bare["wall_p50_us"],
            "harness_overhead": (None if graph is None
                                 else graph.stats["p50_us"] / bare["wall_p50_us"] - 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vgg19", type=Path, required=True, help="the zoo's VGG19 .pt")
    parser.add_argument("--torchvision", type=Path, required=True,
                        help="a card-less batch-1 torch.export of a torchvision CNN")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "cuda.json")
    args = parser.parse_args()
    lenet = ROOT / "models" / "lenet5.pt"
    cases = [case(lenet, 1, "fp32", None), case(lenet, 256, "fp16", None),
             case(args.vgg19, 1, "fp16", None), case(args.vgg19, 32, "fp16", None),
             case(args.vgg19, 1, "fp32", None),
             case(args.torchvision, 1, "fp16", (3, 224, 224))]
    args.out.write_text(json.dumps(cases, indent=1))
    def cell(value: float | None, form: str = "{:.0f}") -> str:
        return "n/a" if value is None else form.format(value)

    for c in cases:
        rows = c["rows"]
        eager, tuned, graph = (rows.get(f"torch-cuda:{c['precision']}{m}", {}).get("p50_us")
                               for m in ("", ":tuned", ":graph"))
        overhead = c["harness_overhead"]
        print(f"| {c['model']} b{c['batch']} {c['precision']} | {cell(eager)} | {cell(tuned)} | "
              f"{cell(graph)} | {c['bare_graph']['wall_p50_us']:.0f} | "
              f"{c['best_vs_bare']:.2f}x | "
              f"{cell(None if overhead is None else 100 * overhead, '{:+.1f} %')} |")
        for note in c["notes"]:
            print(f"  note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
