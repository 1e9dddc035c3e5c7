"""Seeded training of zoo architectures, and saving models with their card.

Models are saved as ``torch.export`` archives with a dynamic batch dimension: they load in plain
PyTorch with ``torch.export.load`` (no edgecnn, no unpickling) and feed the ONNX exporter directly.
"""

from __future__ import annotations

import io
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edgecnn import zoo
from edgecnn.errors import DataError, ParameterError
from edgecnn.files.card import CARD_ARCHIVE_NAME, ModelCard, card_path_for, sha256_of
from edgecnn.files.data import Dataset
from edgecnn.files.outputs import atomic_path, write_text_atomic
from edgecnn.files.torch_files import default_card

MAX_BATCH = 1 << 16


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; the defaults take LeNet-5 past 99 % on MNIST in a few minutes on 2 cores."""

    epochs: int = 12
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.epochs <= 10_000 or not 1 <= self.batch_size <= 65_536:
            raise ParameterError("`epochs` must be 1..10000 and `batch_size` 1..65536", "epochs",
                                 "batch_size")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ParameterError("`learning_rate` must be a finite number > 0", "learning_rate")


def evaluate(module: nn.Module, data: Dataset, card: ModelCard, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``module`` on ``data``."""
    module.eval()
    correct = 0
    with torch.inference_mode():
        for x, y in data.batches(card.input, batch_size):
            correct += int((module(torch.from_numpy(x)).argmax(1).numpy() == y).sum())
    return correct / len(data)


def train(arch: str, train_data: Dataset, test_data: Dataset,
          config: TrainConfig = TrainConfig()) -> tuple[nn.Module, ModelCard]:
    """Train ``arch`` from scratch with Adam and a one-cycle schedule; return it and its card."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    card = default_card(arch)
    for data in (train_data, test_data):
        data.check_fits(card.input)
        if data.labels.min() < 0 or data.labels.max() >= len(card.labels):
            raise DataError(f"{data.source}: labels run {data.labels.min()}..{data.labels.max()}"
                            f" but {arch} has {len(card.labels)} classes; use data labelled "
                            f"0..{len(card.labels) - 1}")
    module = zoo.build(arch)
    x_all = torch.from_numpy(card.input.preprocess(train_data.images))
    y_all = torch.from_numpy(train_data.labels)
    steps = (len(train_data) + config.batch_size - 1) // config.batch_size
    optimiser = torch.optim.AdamW(module.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, config.learning_rate,
                                                   total_steps=steps * config.epochs)
    loss_fn = nn.CrossEntropyLoss()
    started = time.perf_counter()
    for epoch in range(config.epochs):
        module.train()
        order = torch.from_numpy(rng.permutation(len(train_data)))
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch",
                   disable=None, leave=False)
        for step in bar:
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            optimiser.zero_grad()
            loss = loss_fn(module(x_all[idx]), y_all[idx])
            loss.backward()
            optimiser.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
        # one line per epoch even without a terminal (CI logs, pipes), where tqdm stays silent
        tqdm.write(f"epoch {epoch + 1}/{config.epochs}: loss {loss.item():.4f}, test accuracy "
                   f"{100 * evaluate(module, test_data, card):.2f} %, "
                   f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    module.eval()
    accuracy = evaluate(module, test_data, card)
    card = ModelCard(card.architecture, card.parameters, card.input, card.labels,
                     dataset=f"{card.dataset} ({len(train_data)} training images)",
                     epochs=config.epochs, test_accuracy=round(accuracy, 6),
                     extra={"seed": config.seed, "batch_size": config.batch_size,
                            "learning_rate": config.learning_rate, "optimizer": "AdamW+OneCycle",
                            "trained_at": time.strftime("%Y-%m-%d"),
                            "reproducibility": REPRODUCIBILITY,
                            "torch": torch.__version__})
    return module, card


REPRODUCIBILITY = ("the same seed, data and torch build give bit-identical weights; the "
                   "archive's sha256 differs between runs: torch.export.save writes a random "
                   ".data/serialization_id and this card records the training date")


def save_model(module: nn.Module, card: ModelCard, path: Path) -> ModelCard:
    """Write ``module`` as a torch.export archive (card embedded) and the card beside it.

    The sidecar card also records the archive's sha256, so a copied model can be checked.
    """
    example = torch.zeros((2, *card.input.shape))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(module.eval(), (example,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()  # torch.export.save warns on paths not ending in .pt2
    torch.export.save(program, buffer, extra_files={CARD_ARCHIVE_NAME: card.to_json()})
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
        card = card.with_sha256(sha256_of(tmp))
        write_text_atomic(card_path_for(path), card.to_json() + "\n")
    return card
