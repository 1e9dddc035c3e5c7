"""The accuracy budget's layer table runs on a few images (``LAYER_IMAGES``), not on all of the
budget's data: it only orders the candidates, and on EfficientNet-Lite0 with swish (125
candidates, 96 crops at batch 1) the full table took 108 s of a 4-minute search, where 32
images took 21 s and chose the same 122 layers (docs/int8-accuracy.md). Checked here on the
shipped outlier model: the search reads the table from at most 32 images, and 32 images name
the same worst layers as 200.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

import edgecnn.checks.layer_table as layer_table
from edgecnn.api import ConvertConfig, convert
from edgecnn.checks.budget import LAYER_IMAGES, PASS_THROUGH, Budget

ROOT = Path(__file__).resolve().parent.parent
OUTLIER = ROOT / "models" / "mobile_se_outlier.pt"


def _worst(errors: list[layer_table.LayerError], count: int) -> list[str]:
    """The first ``count`` candidates in the budget's order."""
    nodes = [e.tensor.node for e in layer_table.worst_first(errors)
             if e.tensor.node and e.tensor.op not in PASS_THROUGH]
    return list(dict.fromkeys(nodes))[:count]


def test_the_search_orders_candidates_on_a_few_images(test_set, tmp_path, monkeypatch):
    from edgecnn.files.card import read_sidecar

    seen: list[tuple[onnx.ModelProto, onnx.ModelProto, np.ndarray, list[layer_table.LayerError]]] = []
    real = layer_table.layer_errors

    def spy(float_model, qdq, images, *args, **kwargs):
        errors = real(float_model, qdq, images, *args, **kwargs)
        kept = onnx.ModelProto()  # convert writes the chosen model weight by weight, freeing it
        kept.CopyFrom(qdq)
        seen.append((float_model, kept, images, errors))
        return errors

    monkeypatch.setattr(layer_table, "layer_errors", spy)
    images = test_set.take(200)
    data = tmp_path / "budget.npz"
    np.savez(data, x=images.images, y=images.labels)
    result = convert(OUTLIER, tmp_path / "unmet.onnx", ConvertConfig(
        "onnx", int8=True, per_channel=False, budget_data=data,
        budget=Budget(min_agreement_pct=100.0, max_float_layers=3)))
    assert result.budget is not None
    assert [len(s[2]) for s in seen] == [LAYER_IMAGES] and LAYER_IMAGES <= 32
    # the cost of the budget (every candidate float) is the quantisation right after plain
    # int8 and the three methods
    assert [len(t.float_nodes) for t in result.budget.trials] == [0, 0, 0, 0, 3]
    # and the few images name the same worst layers as all 200 do
    card = read_sidecar(OUTLIER)
    assert card is not None
    float_model, qdq, _, few = seen[0]
    many = real(float_model, qdq, card.input.preprocess(images.images))
    assert _worst(few, 2) == _worst(many, 2)


def test_the_summary_names_a_few_kept_layers_and_counts_the_rest():
    from edgecnn.checks.budget import SUMMARY_LAYERS, Budget, BudgetResult, Trial

    nodes = tuple(f"n{i}" for i in range(SUMMARY_LAYERS + 3))
    trial = Trial(nodes, 99.0, 0.1, 95.0, True)
    result = BudgetResult(Budget(min_agreement_pct=90.0), 99.1, None, trial,  # type: ignore[arg-type]
                          [trial], {n: f"layer.{n}" for n in nodes})
    line = result.summary()
    assert f"kept in float: {len(nodes)} layers: layer.n0, " in line and "(3 more)" in line
    assert f"layer.n{SUMMARY_LAYERS}" not in line  # the rest are in to_dict()
    assert len(result.to_dict()["kept in float"]) == len(nodes)


def test_the_summary_and_json_name_the_methods_used_and_those_without_gain():
    """The methods of the chosen trial are those used; a method tried in some trial but absent
    from the chosen one is named as tried without gain (in the line and in to_dict)."""
    from edgecnn.checks.budget import Budget, BudgetResult, Trial

    plain = Trial((), 93.0, 6.0, 93.5, False)
    cle = Trial((), 99.0, 0.1, 99.5, False, methods=("cross-layer-equalization",))
    mse = Trial((), 98.0, 0.3, 99.3, False, "mse", ("cross-layer-equalization", "mse"))
    result = BudgetResult(Budget(min_agreement_pct=100.0), 99.1, None, cle,  # type: ignore[arg-type]
                          [plain, cle, mse])
    assert "; methods: cross-layer-equalization (no gain: mse); kept in float: none; " \
        in result.summary()
    data = result.to_dict()
    assert data["methods"] == ["cross-layer-equalization"]
    assert data["methods without gain"] == ["mse"]
    assert data["trials"][2]["methods"] == ("cross-layer-equalization", "mse")
    untried = BudgetResult(Budget(min_agreement_pct=90.0), 99.1, None, plain,  # type: ignore[arg-type]
                           [plain])
    assert "methods" not in untried.summary()
