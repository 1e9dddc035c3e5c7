"""Mutation testing of the correctness-deciding code: parity report, latency statistics, quantisation,
lowering core, op lowerings and TFLite builder.

A small, self-contained mutation runner (standard library only). It was written instead of using
mutmut 3 because mutmut names mutants after the file path (``targets/support/runner.py`` ->
``targets.runner``) while this project imports that file as ``edgecnn.targets.support.runner`` through
setuptools ``package-dir``, and because an editable install points every import at the original
checkout rather than at mutmut's ``mutants/`` copy; see docs/testing.md.

What it does, for each target below (one file, or several: ``files`` maps each to its functions,
``"*"`` meaning every function and method in it):

1. copies the repository (tracked and untracked files, no .git/.venv) into a temporary folder and
   installs an import hook (a ``sitecustomize.py`` on ``PYTHONPATH``, also seen by subprocesses)
   that maps ``edgecnn``, ``edgecnn.converters`` and ``edgecnn.targets`` onto that copy, so the
   tests exercise the mutated file whatever the active environment has installed;
2. finds the mutation points inside the target functions with :mod:`ast`: comparison flips
   (``>``/``>=``, ``<``/``<=``, ``==``/``!=``, ``is``/``is not``, ``in``/``not in``), arithmetic swaps
   (``+``/``-``, ``*``/``/``), dropping a unary ``-`` or ``not``, ``and``/``or`` swaps, constants
   (a number n -> n + 1, ``True``/``False`` swapped), and deleting a statement that records a result
   (``row.failures.append(...)``, an assignment to ``row.*`` / a plain ``return``, ``raise``,
   ``break``);
3. applies one mutant at a time (the module is re-emitted with :func:`ast.unparse`; the baseline
   run uses the same unparsed, unmutated module, so formatting is not a confound), runs only
   that module's fast tests with ``-x``, and counts the mutant *killed* when pytest fails or times
   out, *survived* when it passes.

Run from the repository root, in the project's environment::

    python scripts/mutation_test.py                      # both targets, every mutant
    python scripts/mutation_test.py --target runner      # or --target validate
    python scripts/mutation_test.py --list               # the mutants only, runs nothing
    python scripts/mutation_test.py --max-mutants 40 --seed 0   # a reproducible sample
    python scripts/mutation_test.py --json out.json      # also write every result
    python scripts/mutation_test.py --target runner --ids 5,9   # re-test chosen mutants
    python scripts/mutation_test.py --target qdq --first-tests tests/test_qdq.py
        # every mutant against the fast file first, the target's own tests on its survivors only

``--first-tests`` gives the same score as the target's tests alone: those tests include the fast
file, and pytest ``-x`` fails the run on any failing test, so a mutant the fast file kills the
whole set kills too. It only saves time (the fast files run in 1-10 s, the target sets in 15-40 s).

Time (before the quantisation, lowering, ops and builder targets were added; see
docs/testing.md for theirs): one test run takes about 25 s for validate (``tests/test_validate.py`` +
``tests/test_int8_portable.py``) and about 12 s for runner (``tests/test_bench.py``, three tests)
on a 2-core machine; a killed mutant is usually faster (``-x``). A full run of both targets
(about 125 mutants) takes about 40 minutes on 2 cores; ``--jobs 2`` runs two mutants at a time.
Exit status: 0 always after a completed run (the score is a measurement, not a gate), 2 when the
unmutated baseline fails.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TARGETS = {
    "validate": {
        "file": "edgecnn/checks/validate.py",
        "functions": ["Thresholds.__post_init__", "paired_ci", "worst_classes", "compare",
                      "Int8References.measure"],
        "tests": ["tests/test_validate.py", "tests/test_int8_portable.py",
                  "-k", "not haswell and not avx2"],
    },
    "runner": {
        "file": "targets/support/runner.py",
        "functions": ["latency_stats", "measure"],
        # the two fast unit tests first so that -x stops early on a mutant they kill
        "tests": ["tests/test_bench.py::test_latency_statistics_by_hand",
                  "tests/test_bench.py::test_measure_stops_at_max_time_and_takes_at_least_runs",
                  "tests/test_bench.py::test_cpu_bench_reports_every_runtime_with_stats",
                  "tests/test_bench.py::test_latency_statistics_of_one_and_two_runs",
                  "tests/test_bench.py::test_measure_honours_min_time_and_times_each_run"],
    },
    "precision": {
        "file": "edgecnn/runtimes/placements.py",
        "functions": ["Placement.__post_init__", "Placement.parse", "ParityCheck.passed",
                      "ParityCheck.failure", "check_parity", "require_parity", "move_module"],
        "tests": ["tests/test_precision.py"],
    },
    "qdq": {
        "file": "converters/qdq.py",
        "functions": ["is_qdq", "check_quant_params", "check_pairs", "_constant",
                      "eight_bit_tensors", "encoding", "reencode", "to_int8", "as_int8",
                      "fingerprint", "output_steps"],
        "tests": ["tests/test_qdq.py", "tests/test_int8_portable.py",
                  "-k", "not haswell and not avx2"],
    },
    "quantize": {
        "file": "converters/quantize.py",
        "functions": ["QuantConfig.__post_init__", "quantize_onnx", "_op_coverage",
                      "require_calibration", "refuse_test_images",
                      "_refuse_unquantisable_input", "_onnxruntime_errors"],
        "tests": ["tests/test_quantize.py", "tests/test_onnx_and_int8.py",
                  "-k", "not fp32_onnx_matches_pytorch"],
    },
    "lowering": {
        "files": {
            "converters/lowering.py": "*",
            "converters/onnx_graph.py": ["WeightQuant.params", "_with_static_batch",
                                         "_fold_weight_dequantize", "_fold_activation_qdq",
                                         "_fold_constant_nodes"],
        },
        "tests": ["tests/test_lowering_core.py", "tests/test_tflite.py",
                  "-k", "not zoo and not tflite-runtime"],
    },
    "ops": {
        "files": {f"converters/ops/{name}.py": "*" for name in
                  ("activations", "conv", "dense", "elementwise", "normalization", "pooling",
                   "reduce", "resize", "shape")},
        "tests": ["tests/test_op_attributes.py", "tests/test_tflite.py",
                  "-k", "not zoo and not tflite-runtime"],
    },
    "tflite_builder": {
        "file": "converters/tflite_builder.py",
        "functions": "*",
        "tests": ["tests/test_tflite_builder.py", "tests/test_tflite.py",
                  "-k", "not zoo and not tflite-runtime"],
    },
}

# Maps the installed package names onto a copy of the repository (setuptools package-dir layout).
SHIM = '''
import os, sys
from importlib.util import spec_from_file_location
_root = os.environ.get("MUTATION_ROOT")
_MAP = {"edgecnn": "edgecnn", "edgecnn.converters": "converters",
        "edgecnn.converters.ops": "converters/ops", "edgecnn.targets": "targets"}
class _MutationRedirect:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if not _root or name not in _MAP:
            return None
        folder = os.path.join(_root, _MAP[name])
        return spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                       submodule_search_locations=[folder])
if _root:
    sys.meta_path.insert(0, _MutationRedirect)
'''

CMP_SWAP = {ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Lt: ast.LtE, ast.LtE: ast.Lt,
            ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
            ast.In: ast.NotIn, ast.NotIn: ast.In}
BIN_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}
OP_TEXT = {ast.Gt: ">", ast.GtE: ">=", ast.Lt: "<", ast.LtE: "<=", ast.Eq: "==",
           ast.NotEq: "!=", ast.Is: "is", ast.IsNot: "is not", ast.In: "in",
           ast.NotIn: "not in", ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/",
           ast.And: "and", ast.Or: "or"}


@dataclass
class Mutant:
    id: int
    target: str
    file: str
    line: int
    function: str
    kind: str
    description: str
    node_index: int  # position of the node in ast.walk order of the module
    detail: int = 0  # which operator of a chained comparison
    status: str = ""  # killed / survived / timeout
    stage: str = ""  # which tests decided it: "first" (--first-tests) or "target"
    seconds: float = 0.0


def _functions(tree: ast.Module, names: list[str]) -> dict[ast.AST, str]:
    """The function definitions named ``f`` or ``Class.f``, mapped to that name."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            found[node] = node.name
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                qual = f"{node.name}.{getattr(item, 'name', '')}"
                if isinstance(item, ast.FunctionDef) and qual in names:
                    found[item] = qual
    missing = set(names) - set(found.values())
    if missing:
        raise SystemExit(f"functions not found: {sorted(missing)}")
    return found


def _all_functions(tree: ast.Module) -> list[str]:
    """Every top-level function and method of the module, as ``f`` or ``Class.f``."""
    names = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names.append(node.name)
        if isinstance(node, ast.ClassDef):
            names += [f"{node.name}.{item.name}" for item in node.body
                      if isinstance(item, ast.FunctionDef)]
    return names


def _inside(tree: ast.Module, names: list[str]) -> dict[int, str]:
    """id() of every node inside the target functions (not their signatures) -> function."""
    owner = {}
    for fn, qual in _functions(tree, names).items():
        for stmt in fn.body:
            for node in ast.walk(stmt):
                owner[id(node)] = qual
    return owner


def _is_recording(stmt: ast.stmt) -> bool:
    """A statement whose deletion is a meaningful mutant: it records or reports a result."""
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        return isinstance(stmt.value.func, ast.Attribute) and stmt.value.func.attr == "append"
    if isinstance(stmt, ast.Assign | ast.AugAssign):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        return any(isinstance(t, ast.Attribute) for t in targets)
    return isinstance(stmt, ast.Raise | ast.Break) or (
        isinstance(stmt, ast.Return) and stmt.value is None)


def target_files(target: str) -> dict[str, list[str] | str]:
    """The files of ``target`` and, for each, the functions to mutate (``"*"``: all of them).

    A target names one file (``file`` + ``functions``) or several (``files``: path -> functions),
    so that a concern spread over a package (the op lowerings) is measured as one module.
    """
    spec = TARGETS[target]
    return spec["files"] if "files" in spec else {spec["file"]: spec["functions"]}


def find_mutants(target: str) -> list[Mutant]:
    """Every mutant of ``target``, numbered from 0 across its files in the order they are named."""
    mutants: list[Mutant] = []
    for path, functions in target_files(target).items():
        mutants += _file_mutants(target, path, functions, len(mutants))
    return mutants


def _file_mutants(target: str, path: str, functions: list[str] | str, first_id: int
                  ) -> list[Mutant]:
    source = (ROOT / path).read_text()
    tree = ast.parse(source)
    owner = _inside(tree, _all_functions(tree) if functions == "*" else list(functions))
    mutants: list[Mutant] = []

    def add(node, index, kind, before, after, detail=0):
        mutants.append(Mutant(first_id + len(mutants), target, path, node.lineno,
                              owner[id(node)], kind, f"{before}  ->  {after}", index, detail))

    parent = {id(c): n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
    for index, node in enumerate(ast.walk(tree)):
        if id(node) not in owner:
            continue
        seg = ast.get_source_segment(source, node) or ast.unparse(node)
        seg = " ".join(seg.split())
        if isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                if type(op) in CMP_SWAP:
                    nth = f" (#{k + 1})" if len(node.ops) > 1 else ""
                    add(node, index, "comparison", f"{OP_TEXT[type(op)]}{nth} in `{seg}`",
                        OP_TEXT[CMP_SWAP[type(op)]], k)
        elif isinstance(node, ast.BinOp) and type(node.op) in BIN_SWAP:
            add(node, index, "arithmetic", f"{OP_TEXT[type(node.op)]} in `{seg}`",
                OP_TEXT[BIN_SWAP[type(node.op)]])
        elif isinstance(node, ast.BoolOp):
            other = "or" if isinstance(node.op, ast.And) else "and"
            add(node, index, "boolean", f"{OP_TEXT[type(node.op)]} in `{seg}`", other)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not):
            add(node, index, "unary", f"`{seg}`", f"`{ast.unparse(node.operand)}`")
        elif isinstance(node, ast.Constant):
            around = parent[id(node)]
            if isinstance(around, ast.keyword):
                where = f"`{around.arg}={seg}`"
            else:
                text = " ".join((ast.get_source_segment(source, around) or "").split())[:60]
                where = f"`{seg}` in `{text}`"
            if isinstance(node.value, bool):
                add(node, index, "constant", where, f"`{not node.value}`")
            elif isinstance(node.value, int | float):
                add(node, index, "constant", where, f"`{node.value + 1!r}`")
        if isinstance(node, ast.stmt) and _is_recording(node):
            add(node, index, "statement", f"`{seg[:70]}`", "deleted (pass)")
    return mutants


def mutated_source(source: str, mutant: Mutant | None) -> str:
    tree = ast.parse(source)
    if mutant is not None:
        node = next(n for i, n in enumerate(ast.walk(tree)) if i == mutant.node_index)
        if mutant.kind == "comparison":
            node.ops[mutant.detail] = CMP_SWAP[type(node.ops[mutant.detail])]()
        elif mutant.kind == "arithmetic":
            node.op = BIN_SWAP[type(node.op)]()
        elif mutant.kind == "boolean":
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        elif mutant.kind == "constant":
            node.value = (not node.value) if isinstance(node.value, bool) else node.value + 1
        elif mutant.kind == "unary" or mutant.kind == "statement":
            tree = _Replace(node, mutant.kind).visit(tree)
        ast.fix_missing_locations(tree)
    return ast.unparse(tree) + "\n"


class _Replace(ast.NodeTransformer):
    def __init__(self, node: ast.AST, kind: str) -> None:
        self.node, self.kind = node, kind

    def generic_visit(self, node):
        return super().generic_visit(node)

    def visit(self, node):
        if node is self.node:
            if self.kind == "unary":
                return copy.deepcopy(node.operand)
            return ast.copy_location(ast.Pass(), node)
        return super().visit(node)


def make_copy(workdir: Path) -> Path:
    """The repository (tracked + untracked, not ignored) copied under ``workdir``."""
    repo = workdir / "repo"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    shared = ROOT.parent / "shared"  # tests look for ../shared/data next to the checkout
    if shared.exists():
        (workdir / "shared").symlink_to(shared)
    (workdir / "shim").mkdir()
    (workdir / "shim" / "sitecustomize.py").write_text(SHIM)
    return repo


def present_tests(repo: Path, tests: list[str]) -> list[str]:
    """``tests`` without the test files that do not exist in ``repo``.

    A target names its own test file (``tests/test_qdq.py`` for qdq, ...), written to kill the survivors; the
    first measurement is taken before that file exists and must not fail on it.
    """
    kept = [t for t in tests if not t.startswith("tests/") or (repo / t.split("::")[0]).exists()]
    for t in tests:
        if t not in kept:
            print(f"   (not there, left out: {t})", flush=True)
    return kept


def run_tests(workdir: Path, repo: Path, tests: list[str], timeout: float) -> tuple[str, float]:
    env = dict(os.environ, MUTATION_ROOT=str(repo), PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(workdir / "shim"),
                                                        os.environ.get("PYTHONPATH")])))
    started = time.monotonic()
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p",
                                 "no:cacheprovider", *tests], cwd=repo, env=env,
                                capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started
    status = "survived" if result.returncode == 0 else "killed"
    if result.returncode not in (0, 1):  # 1 = a test failed; anything else is an error
        status = "killed"  # e.g. collection error (the mutant breaks import): still killed
    return status, time.monotonic() - started


def test_mutants(workers: list[tuple[Path, Path]], sources: dict[str, str],
                 unparsed: dict[str, str], mutants: list[Mutant], tests: list[str],
                 stage: str) -> bool:
    """Run ``tests`` once unmutated (the baseline, which must pass), then once per mutant,
    setting each mutant's status; False when the baseline fails."""
    workdir, repo = workers[0]
    tests = present_tests(repo, tests)
    status, base_s = run_tests(workdir, repo, tests, timeout=1800)
    print(f"   baseline (unparsed, unmutated): {status} in {base_s:.0f} s", flush=True)
    if status != "survived":
        print("   the tests fail without any mutation: fix that first", file=sys.stderr)
        return False
    timeout = 3 * base_s + 30
    free = list(workers)

    def one(m: Mutant) -> Mutant:
        workdir, repo = free.pop()
        try:
            (repo / m.file).write_text(mutated_source(sources[m.file], m))
            m.status, m.seconds = run_tests(workdir, repo, tests, timeout)
            m.stage = stage
        finally:
            (repo / m.file).write_text(unparsed[m.file])
            free.append((workdir, repo))
        print(f"   #{m.id:3d} {m.status:8s} {m.seconds:5.0f} s  {m.file}:{m.line} "
              f"[{m.function}] {m.kind}: {m.description}", flush=True)
        return m

    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        list(pool.map(one, mutants))
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    parser.add_argument("--max-mutants", type=int, default=0,
                        help="per target; 0 = all. A random sample drawn with --seed.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ids", help="comma-separated mutant ids (as --list numbers them) to test; "
                        "needs a single --target")
    parser.add_argument("--tests", help="pytest arguments replacing the target's tests, e.g. "
                        "'tests/test_qdq.py': a faster subset. A mutant a subset kills, "
                        "the whole set kills too (-x stops at any failure), so the score is a "
                        "lower bound; re-test its survivors with --ids and the target's own tests")
    parser.add_argument("--first-tests", help="pytest arguments to try on every mutant first, "
                        "e.g. 'tests/test_qdq.py'; only their survivors then run the "
                        "target's tests. A mutant the first tests kill, the target's tests (which "
                        "include them) kill too, so the score is the target's, in less time")
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested at a time")
    parser.add_argument("--list", action="store_true", help="print the mutants and stop")
    parser.add_argument("--json", type=Path, help="write every mutant and its result here")
    args = parser.parse_args()

    targets = list(TARGETS) if args.target == "all" else [args.target]
    results: list[Mutant] = []
    for target in targets:
        spec = TARGETS[target]
        mutants = find_mutants(target)
        total_found = len(mutants)
        if args.ids:
            wanted = {int(i) for i in args.ids.split(",")}
            mutants = [m for m in mutants if m.id in wanted]
        if args.max_mutants and len(mutants) > args.max_mutants:
            mutants = sorted(random.Random(args.seed).sample(mutants, args.max_mutants),
                             key=lambda m: m.id)
        files = target_files(target)
        print(f"== {target}: {', '.join(f'{f} {fns}' for f, fns in files.items())}: "
              f"{total_found} mutants, testing {len(mutants)}", flush=True)
        if args.list:
            for m in mutants:
                print(f"  #{m.id:3d} {m.file}:{m.line} [{m.function}] {m.kind}: {m.description}")
            continue
        # the baseline of every file is its unparsed, unmutated form (see the module docstring)
        sources = {f: (ROOT / f).read_text() for f in files}
        unparsed = {f: mutated_source(text, None) for f, text in sources.items()}
        stages = [("first", shlex.split(args.first_tests))] if args.first_tests else []
        stages.append(("target", shlex.split(args.tests) if args.tests else spec["tests"]))
        with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
            workers = []
            for j in range(max(1, args.jobs)):
                workdir = Path(tmp) / f"w{j}"
                workdir.mkdir()
                workers.append((workdir, make_copy(workdir)))
            for _, repo in workers:
                for f, text in unparsed.items():
                    (repo / f).write_text(text)
            pending = mutants
            for stage, stage_tests in stages:
                if len(stages) > 1:
                    print(f"   -- {stage} tests: {len(pending)} mutants", flush=True)
                if not test_mutants(workers, sources, unparsed, pending, stage_tests, stage):
                    return 2
                pending = [m for m in pending if m.status == "survived"]
        done = mutants
        results += done
        killed = sum(m.status != "survived" for m in done)
        print(f"== {target}: {killed}/{len(done)} killed "
              f"({100 * killed / max(1, len(done)):.0f} %)", flush=True)
        if args.first_tests:
            first = sum(m.status != "survived" and m.stage == "first" for m in done)
            print(f"   ({first} by the first tests, {killed - first} by the target's)", flush=True)
        for m in done:
            if m.status == "survived":
                print(f"   SURVIVED {m.file}:{m.line} [{m.function}] {m.kind}: {m.description}")
    if args.json and not args.list:
        args.json.write_text(json.dumps([asdict(m) for m in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
