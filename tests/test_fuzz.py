"""Seeded mutation fuzzing of model files: every mutant is refused with an EdgecnnError (one
line, exit 2 at the CLI) or loads; nothing raises anything else, hangs or crashes.

Mutations: random byte flips, truncation, and 4-byte words overwritten with extreme integers
(which hit flatbuffer offsets, protobuf lengths and zip sizes). The cases run in-process through
`edgecnn.inspection.inspect_model`, the code every command uses to read a model; a subprocess
per case would spend CI's budget on interpreter start-up.
"""

from __future__ import annotations

import random

import pytest

from edgecnn.errors import EdgecnnError
from edgecnn.inspection import inspect_model
from tests.conftest import LENET

EXTREMES = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFF, 0x10000]
CASES = {"onnx": 2000, "tflite_int8": 1000, "pt": 200}  # mutants per format


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    kind = rng.randrange(3)
    if kind == 0:  # flip a few random bytes
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif kind == 1:  # truncate
        del buf[rng.randrange(1, len(buf)):]
    else:  # an extreme 32-bit word: offsets, lengths, counts
        at = rng.randrange(0, len(buf) - 4)
        buf[at:at + 4] = rng.choice(EXTREMES).to_bytes(4, "little")
    return bytes(buf)


@pytest.mark.parametrize("kind", list(CASES))
def test_mutated_model_files_never_escape_as_tracebacks(tmp_path, artefacts, kind):
    source = LENET if kind == "pt" else artefacts[kind]
    original = source.read_bytes()
    rng = random.Random(f"edgecnn-fuzz-{kind}")
    escaped: list[str] = []
    for case in range(CASES[kind]):
        path = tmp_path / f"m{case % 2}{source.suffix}"
        path.write_bytes(mutate(original, rng))
        try:
            inspect_model(path)
        except EdgecnnError as exc:
            assert "\n" not in str(exc), str(exc)
        except Exception as exc:  # noqa: BLE001 - the point: report every other exception
            escaped.append(f"case {case}: {type(exc).__name__}: {str(exc)[:120]}")
    assert not escaped, f"{len(escaped)} of {CASES[kind]} mutants escaped:\n" + "\n".join(escaped[:10])


def test_a_seeded_fuzzing_campaign_keeps_the_readmes_promises(tmp_path):
    """24 structure-aware cases through the real CLI, each in a child under a memory cap and a
    timeout (tests/fuzzing.py; scripts/fuzz.py runs long campaigns): every outcome is an
    acceptance or one named line, never a crash, hang, traceback, changed input or leftover."""
    from tests.fuzzing import campaign

    outcomes = campaign(24, seed=2026, root=tmp_path)
    findings = [f"case {o.case.number} ({o.case.kind}, {' '.join(o.case.args)[:100]}): "
                f"{o.verdict}: {o.line}" for o in outcomes if o.finding]
    assert not findings, "\n".join(findings)
    assert {o.verdict for o in outcomes} >= {"refused"}  # the mutants do reach the checks


def test_the_harness_reports_a_hang_and_a_blow_up(tmp_path):
    """The gate watched failing: a child that cannot finish in time is a hang, one that cannot
    get memory under the cap is a finding, and a clean refusal is not."""
    from tests.fuzzing import Case, run_case

    case = Case(0, "args", "args", ["inspect", str(LENET)])
    assert run_case(case, tmp_path, timeout_s=0.05).verdict == "hang"
    assert run_case(case, tmp_path, memory_cap=200 << 20).finding  # libraries cannot map
    missing = Case(1, "args", "args", ["inspect", str(tmp_path / "missing.onnx")])
    assert run_case(missing, tmp_path).verdict == "refused"
