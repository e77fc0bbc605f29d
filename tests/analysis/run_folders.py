"""Small run folders for report tests, written directly instead of by a search or retraining."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pocketnas.config import RetrainConfig, SearchConfig, save_config
from pocketnas.fileio import atomic_torch_save
from pocketnas.retrain.train import build_network, network_spec
from pocketnas.search_space.genotype import Genotype
from pocketnas.search_space.operations import PRIMITIVES

NODES = 2
EDGES = 2 + 3  # node 0 has two inputs, node 1 three
GENOTYPES = [
    Genotype.from_dict(
        {
            "normal": [
                [["dw_conv_3x3", 0], ["skip_connect", 1]],
                [[first, 1], ["max_pool_3x3", 2]],
            ],
            "normal_concat": [2, 3],
            "reduce": [[["avg_pool_3x3", 0], ["dw_conv_5x5", 1]], [["dw_conv_3x3", 2], [first, 0]]],
            "reduce_concat": [2, 3],
        }
    )
    for first in ("dw_conv_3x3", "dw_conv_5x5", "dw_conv_7x7")
]


def softmax_rows(seed: int) -> list[list[float]]:
    logits = np.random.default_rng(seed).normal(size=(EDGES, len(PRIMITIVES)))
    weights = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return weights.tolist()


def write_search_run(folder: Path, epochs: int = 3) -> Path:
    folder.mkdir()
    config = SearchConfig(
        channels=4, layers=4, nodes=NODES, embedding_size=16, image_size=32, epochs=epochs
    )
    save_config(folder / "config.yaml", config)
    (folder / "genotypes").mkdir()
    (folder / "alphas").mkdir()
    lines = ["epoch,lr,train_loss,train_accuracy,val_loss,val_accuracy,seconds"]
    for epoch in range(1, epochs + 1):
        lines.append(
            f"{epoch},{0.1 / epoch},{4 - epoch * 0.3},{0.1 * epoch},{4 - epoch * 0.2},"
            f"{0.08 * epoch},1.5"
        )
        genotype = GENOTYPES[(epoch - 1) % len(GENOTYPES)]
        (folder / "genotypes" / f"epoch_{epoch:03d}.json").write_text(genotype.to_json())
        document = {
            "epoch": epoch,
            "primitives": list(PRIMITIVES),
            "nodes": NODES,
            "normal": softmax_rows(epoch),
            "reduce": softmax_rows(100 + epoch),
        }
        (folder / "alphas" / f"epoch_{epoch:03d}.json").write_text(json.dumps(document))
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    (folder / "genotype.json").write_text(GENOTYPES[(epochs - 1) % len(GENOTYPES)].to_json())
    return folder


def write_retrain_run(folder: Path) -> Path:
    folder.mkdir()
    config = RetrainConfig(channels=4, layers=4, embedding_size=16, image_size=32, epochs=2)
    save_config(folder / "config.yaml", config)
    spec = network_spec(GENOTYPES[0], config)
    model = build_network(spec)
    (folder / "checkpoints").mkdir()
    atomic_torch_save(
        folder / "checkpoints" / "last.pt",
        {"kind": "retrain", "epoch": 2, "network": spec, "model": model.state_dict()},
    )
    (folder / "metrics.csv").write_text(
        "epoch,lr,train_loss,seconds,tiny_pairs_accuracy,tiny_pairs_accuracy_std\n"
        "1,0.1,12.5,0.9,0.61,0.13\n"
        "2,0.01,8.3,0.4,0.66,0.09\n"
    )
    return folder
