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
