"""Build models/mobile_se_outlier.pt: a trained MNIST MobileNet whose int8 form loses accuracy.

int8 breaks on real networks mostly through outlier channels: one channel of a tensor spans a
hundred times the range of the others (BatchNorm folding with a near-zero running variance, a
residual stream that grows), and one scale per tensor leaves the other channels a few steps.
MNIST models trained here do not develop one in a few epochs, so this script makes one without
changing what the network computes: channel ``CHANNEL`` of the last block's projection is
multiplied by ``FACTOR`` (its BatchNorm weight and bias) and the head convolution's weights that
read it are divided by ``FACTOR``. The float model's outputs are the trained model's (up to
float rounding); its int8 model is not.

    python scripts/make_outlier_model.py                        # trains mobile-se first (~4 min)
    python scripts/make_outlier_model.py --trained mobile_se.pt  # or starts from a trained one
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
FACTOR = 128.0
CHANNEL = 5


def rescale(module: torch.nn.Module, factor: float = FACTOR, channel: int = CHANNEL) -> None:
    """Scale one channel between the last projection and the head; the function is unchanged."""
    norm, head = module.blocks[3].project[1], module.head[0]
    with torch.no_grad():
        norm.weight[channel] *= factor
        norm.bias[channel] *= factor
        head.weight[:, channel] /= factor


def main() -> int:
    from edgecnn import zoo
    from edgecnn.files.data import load_dataset
    from edgecnn.files.torch_files import load_torch_model
    from edgecnn.train import TrainConfig, save_model, train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trained", type=Path, help="a trained mobile-se .pt (else train one)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "models" / "mobile_se_outlier.pt")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trained = args.trained
        if trained is None:
            module, card = train("mobile-se", load_dataset(args.data, "train"),
                                 load_dataset(args.data, "test"), TrainConfig(epochs=args.epochs))
            trained = Path(tmp) / "mobile_se.pt"
            save_model(module, card, trained)
        loaded = load_torch_model(trained)
        assert loaded.exported is not None
        module = zoo.build("mobile-se")
        module.load_state_dict(loaded.exported.state_dict, strict=True)
        x = loaded.card.input.random_batch(16)
        before = module(torch.from_numpy(x)).detach().numpy()
        rescale(module)
        after = module(torch.from_numpy(x)).detach().numpy()
        print(f"max |change| of the logits: {np.max(np.abs(after - before)):.2e}")
        note = (f"channel {CHANNEL} of blocks.3.project scaled by {FACTOR:g} and head.0's weights "
                f"reading it divided by {FACTOR:g} (scripts/make_outlier_model.py): the trained "
                "function with an outlier channel, to show what int8 does to one")
        card = save_model(module, replace(loaded.card, extra={**loaded.card.extra,
                                                              "outlier channel": note}), args.output)
    print(f"wrote {args.output} (sha256 {card.sha256})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
