"""Long fuzzing campaigns of edgecnn's CLI (the harness is tests/fuzzing.py).

    python scripts/fuzz.py --cases 400 --seed 1 --jobs 2 --json docs/fuzzing.json --docs

Each worker runs its own seeded campaign (seed, seed+1, ...) in its own folder, so the cases of a
run are reproducible: ``--seed S --cases N --jobs 1`` replays worker S. Findings (crash, hang,
memory, traceback, unnamed error, more than one line, an input changed, a file left behind)
keep their case folder under ``--keep`` for replay; the docs section lists them by class and cause.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fuzzing import FINDINGS, Outcome, campaign  # noqa: E402


def _worker(args: tuple[int, int, str]) -> list[dict[str, object]]:
    cases, seed, keep = args
    root = Path(tempfile.mkdtemp(prefix=f"fuzz{seed}-", dir=keep))

    def show(outcome: Outcome) -> None:
        mark = "!" if outcome.finding else "."
        print(mark, end="", flush=True)

    return [o.to_dict() for o in campaign(cases, seed, root, show)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=200, help="cases in all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="campaigns side by side")
    parser.add_argument("--keep", default=tempfile.gettempdir(),
                        help="where case folders (and findings) are kept")
    parser.add_argument("--json", type=Path, help="every outcome, as JSON")
    parser.add_argument("--docs", action="store_true", help="fill docs/fuzzing.md")
    options = parser.parse_args()
    started = time.perf_counter()
    share = [options.cases // options.jobs + (i < options.cases % options.jobs)
             for i in range(options.jobs)]
    with ProcessPoolExecutor(options.jobs) as pool:
        runs = pool.map(_worker, [(n, options.seed + i, options.keep)
                                  for i, n in enumerate(share)])
        outcomes = [o for run in runs for o in run]
    seconds = time.perf_counter() - started
    print()
    summary = summarise(outcomes, seconds, options)
    print(summary)
    if options.json:
        options.json.write_text(json.dumps({"seconds": seconds, "outcomes": outcomes}, indent=1))
    if options.docs:
        from edgecnn.report import fill_section

        page = REPO / "docs" / "fuzzing.md"
        page.write_text(fill_section(page.read_text() if page.exists() else "",
                                     "<!-- campaign -->", "<!-- /campaign -->", summary))
    return 1 if any(o["verdict"] in FINDINGS for o in outcomes) else 0


def summarise(outcomes: list[dict[str, object]], seconds: float,
              options: argparse.Namespace) -> str:
    verdicts = Counter(str(o["verdict"]) for o in outcomes)
    by_kind: dict[str, Counter[str]] = {}
    for o in outcomes:
        by_kind.setdefault(str(o["kind"]), Counter())[str(o["verdict"])] += 1
    columns = ["accepted", "parity", "refused", *FINDINGS]
    lines = [f"`python scripts/fuzz.py --cases {options.cases} --seed {options.seed} "
             f"--jobs {options.jobs}`: {len(outcomes)} cases in {seconds / 60:.1f} min, "
             f"{sum(verdicts[f] for f in FINDINGS)} findings.", "",
             "| input | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for kind, counts in sorted(by_kind.items()):
        lines.append(f"| {kind} | " + " | ".join(str(counts[c]) for c in columns) + " |")
    lines.append("| **all** | " + " | ".join(str(verdicts[c]) for c in columns) + " |")
    findings = [o for o in outcomes if o["verdict"] in FINDINGS]
    if findings:
        lines += ["", "Findings (case, input, verdict, command, last line):", ""]
        lines += [f"- {o['case']} {o['kind']} **{o['verdict']}** `{' '.join(map(str, o['args']))[:120]}`"
                  f": {str(o['line'])[:200]}" for o in findings[:40]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
