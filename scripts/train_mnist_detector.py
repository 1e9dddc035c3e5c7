"""Train a small single-scale detector on MNIST digits pasted onto larger canvases (issue 23).

Why: every int8 figure before this one came from classifiers. A detector's int8 error shows up
differently (a box shifts, a score crosses the threshold, NMS keeps another box), and needs
mAP rather than top-1 to be seen. This detector is trained here in a few CPU minutes, so the
int8 benchmark (``scripts/int8_accuracy.py``) has a *trained* detector without any download.

    .venv/bin/python scripts/train_mnist_detector.py   # 4-6 min on 2 busy cores
    # -> out/int8_accuracy/mnist_detector.pt2 (557 KiB: not committed), where the benchmark
    #    looks, and rebuilds it when absent; the same seed gives the same weights

The data: 96x96 grey canvases holding 1-4 MNIST digits (10 classes), each scaled to 20-40 px
at a random place, their tight boxes not overlapping. Training canvases use MNIST *training*
digits; :func:`make_canvases` with the test digits gives the evaluation set.

The model (``[N, 1, 96, 96]`` -> ``[N, 15, 12, 12]``, stride 8) is a plain conv stack with a
dense CenterNet/YOLO-style head decoded outside the model (:func:`decode`): per cell an
objectness logit, the box centre's offset in the cell (sigmoid), its log width and height
(relative to :data:`ANCHOR` px) and 10 class logits. The cell holding a box's centre is the
positive one. Keeping the decode outside keeps exp/sigmoid/argmax out of the int8 graph, as
most exported YOLO heads do.
"""

from __future__ import annotations

import argparse
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT.parent / "shared" / "data" / "mnist"
CANVAS = 96
STRIDE = 8
GRID = CANVAS // STRIDE
CLASSES = 10
ANCHOR = 28.0  # px: the box size a zero log-size predicts
MIN_SIZE, MAX_SIZE = 20, 40  # px: the side a 28x28 digit is scaled to
INK = 64  # a pixel brighter than this (of 255) belongs to the digit's tight box
MAX_BATCH = 1024


@dataclass
class DetectionSet:
    """Canvases (uint8 ``[N, 96, 96]``) with per-image boxes (xyxy, px) and labels."""

    images: np.ndarray
    boxes: list[np.ndarray]
    labels: list[np.ndarray]

    def inputs(self) -> np.ndarray:
        """Model input: float32 ``[N, 1, 96, 96]``, ``x = pixels / 255``."""
        return (self.images[:, None].astype(np.float32) / 255.0)


def load_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST digits (uint8 ``[N, 28, 28]``) and labels from /work/shared/data/mnist
    (``train``) or the shipped test set (``t10k``)."""
    from edgecnn.files.data import read_idx

    folder = MNIST if split == "train" else ROOT / "models" / "data" / "mnist"
    images = read_idx(folder / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{split}-labels-idx1-ubyte.gz")
    return images.reshape(-1, 28, 28), labels.astype(np.int64)


def _resize(digit: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of one digit to ``size`` x ``size`` (PIL: no torch in the data path)."""
    from PIL import Image

    return np.asarray(Image.fromarray(digit).resize((size, size), Image.BILINEAR))


def _overlaps(box: np.ndarray, placed: list[np.ndarray]) -> bool:
    return any(box[0] < p[2] and p[0] < box[2] and box[1] < p[3] and p[1] < box[3]
               for p in placed)


def make_canvases(digits: np.ndarray, digit_labels: np.ndarray, count: int, seed: int,
                  max_digits: int = 4) -> DetectionSet:
    """``count`` canvases of 1..``max_digits`` digits each, drawn with ``seed``; a digit's box
    is the tight box of its ink (pixels > :data:`INK`), so boxes fit what is visible."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, CANVAS, CANVAS), np.uint8)
    all_boxes, all_labels = [], []
    for i in range(count):
        placed: list[np.ndarray] = []
        labels: list[int] = []
        for _ in range(int(rng.integers(1, max_digits + 1))):
            pick = int(rng.integers(len(digits)))
            size = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
            scaled = _resize(digits[pick], size)
            rows, cols = np.nonzero(scaled > INK)
            if rows.size == 0:
                continue
            for _try in range(20):
                x0, y0 = (int(v) for v in rng.integers(0, CANVAS - size + 1, 2))
                box = np.array([x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1,
                                y0 + rows.max() + 1], np.float32)
                if not _overlaps(box, placed):
                    window = images[i, y0:y0 + size, x0:x0 + size]
                    np.maximum(window, scaled, out=window)
                    placed.append(box)
                    labels.append(int(digit_labels[pick]))
                    break
        all_boxes.append(np.array(placed, np.float32).reshape(-1, 4))
        all_labels.append(np.array(labels, np.int64))
    return DetectionSet(images, all_boxes, all_labels)


def build_model():  # -> torch.nn.Module (torch imported lazily: the tests need only numpy)
    """The detector: 6 conv-BN-ReLU layers (stride 8, receptive field 55 px > the largest
    digit) and a 1x1 head of 5 + 10 channels; ~21 M MACs per canvas, so it trains in minutes."""
    from torch import nn

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True)]

    layers = [*block(1, 16, 2), *block(16, 32, 2), *block(32, 32, 1), *block(32, 64, 2),
              *block(64, 64, 1), *block(64, 64, 1),
              nn.Conv2d(64, 5 + CLASSES, 1)]
    return nn.Sequential(*layers)


def targets(data: DetectionSet) -> dict[str, np.ndarray]:
    """Dense training targets on the 12x12 grid: the cell holding a box's centre is positive
    and regresses that box (offset in the cell, log size over :data:`ANCHOR`) and its class."""
    n = len(data.images)
    obj = np.zeros((n, GRID, GRID), np.float32)
    box = np.zeros((n, 4, GRID, GRID), np.float32)
    cls = np.full((n, GRID, GRID), -100, np.int64)  # -100: ignored by cross_entropy
    for i, (boxes, labels) in enumerate(zip(data.boxes, data.labels, strict=True)):
        for (x0, y0, x1, y1), label in zip(boxes, labels, strict=True):
            cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
            gx, gy = min(int(cx), GRID - 1), min(int(cy), GRID - 1)
            obj[i, gy, gx] = 1.0
            box[i, :, gy, gx] = (cx - gx, cy - gy, np.log((x1 - x0) / ANCHOR),
                                 np.log((y1 - y0) / ANCHOR))
            cls[i, gy, gx] = label
    return {"obj": obj, "box": box, "cls": cls}


def loss_fn(out, target):  # torch tensors
    """Objectness BCE on every cell (positives weighted 4x: ~2.5 of 144 cells hold a box),
    and on the positive cells BCE on the centre offset, L1 on the log size, CE on the class."""
    import torch
    import torch.nn.functional as F

    pos = target["obj"] > 0
    obj = F.binary_cross_entropy_with_logits(out[:, 0], target["obj"],
                                             pos_weight=torch.tensor(4.0))
    pred = out[:, 1:5].permute(0, 2, 3, 1)[pos]
    want = target["box"].permute(0, 2, 3, 1)[pos]
    centre = F.binary_cross_entropy_with_logits(pred[:, :2], want[:, :2])
    size = F.l1_loss(pred[:, 2:], want[:, 2:])
    cls = F.cross_entropy(out[:, 5:], target["cls"], ignore_index=-100)
    return obj + centre + size + cls


def decode(out: np.ndarray, min_score: float = 0.001, max_boxes: int = 100
           ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Raw head ``[N, 15, 12, 12]`` -> per image (boxes xyxy px, scores, classes) with score
    = sigmoid(objectness) x the best class's softmax, above ``min_score``; NMS is applied
    after (``int8_accuracy.nms``)."""
    out = out.astype(np.float64)
    gy, gx = np.mgrid[0:GRID, 0:GRID]
    results = []
    for o in out:
        obj = 1.0 / (1.0 + np.exp(-o[0]))
        logits = o[5:] - o[5:].max(0, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
        score, cls = obj * probs.max(0), probs.argmax(0)
        cx = (gx + 1.0 / (1.0 + np.exp(-o[1]))) * STRIDE
        cy = (gy + 1.0 / (1.0 + np.exp(-o[2]))) * STRIDE
        w, h = ANCHOR * np.exp(np.clip(o[3], -4, 4)), ANCHOR * np.exp(np.clip(o[4], -4, 4))
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).reshape(-1, 4)
        keep = np.flatnonzero(score.reshape(-1) > min_score)
        keep = keep[np.argsort(-score.reshape(-1)[keep], kind="stable")][:max_boxes * 10]
        results.append((boxes[keep], score.reshape(-1)[keep], cls.reshape(-1)[keep]))
    return results


def train(epochs: int, per_epoch: int, seed: int, batch: int = 64):  # -> nn.Module
    """Seeded training on fresh canvases each epoch (new draws, same digits: augmentation for
    free); AdamW with a one-cycle learning rate."""
    import torch

    torch.manual_seed(seed)
    digits, labels = load_mnist("train")
    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * (per_epoch // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    started = time.perf_counter()
    for epoch in range(epochs):
        data = make_canvases(digits, labels, per_epoch, seed * 1000 + epoch)
        x = torch.from_numpy(data.inputs())
        t = {k: torch.from_numpy(v) for k, v in targets(data).items()}
        order = torch.randperm(len(x))
        model.train()
        total = 0.0
        for start in range(0, len(x) - batch + 1, batch):
            idx = order[start:start + batch]
            loss = loss_fn(model(x[idx]), {k: v[idx] for k, v in t.items()})
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.3f}, "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    return model.eval()


def save(model, path: Path) -> None:
    """A torch.export archive with a dynamic batch (as edgecnn.train writes its models)."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    # an example batch of 2: a batch of 1 would be specialised and refuse the dynamic Dim
    program = torch.export.export(model.eval(), (torch.zeros(2, 1, CANVAS, CANVAS),),
                                  dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path,
                        default=ROOT / "out" / "int8_accuracy" / "mnist_detector.pt2")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--per-epoch", type=int, default=4000, help="canvases per epoch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    model = train(args.epochs, args.per_epoch, args.seed)
    save(model, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
