"""Build models/data/mnist-calib.npz: 1,000 MNIST *training* images, 100 per class, seeded.

Calibration must never see the test set; this subset ships so the int8 path works offline.
Usage: python scripts/make_calibration_set.py ../shared/data/mnist
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from edgecnn.files.data import SHIPPED_CALIBRATION_SET, load_dataset

PER_CLASS = 100


def main(mnist_dir: str) -> None:
    train = load_dataset(mnist_dir, split="train")
    rng = np.random.default_rng(0)
    picks = np.concatenate([rng.choice(np.flatnonzero(train.labels == c), PER_CLASS, replace=False)
                            for c in range(10)])
    picks = rng.permutation(picks)
    np.savez_compressed(SHIPPED_CALIBRATION_SET, x=train.images[picks, :, :, 0],
                        y=train.labels[picks].astype(np.uint8), train_index=picks.astype(np.int32))
    print(f"wrote {SHIPPED_CALIBRATION_SET} ({len(picks)} images)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path("../shared/data/mnist")))
