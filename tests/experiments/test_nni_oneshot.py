"""NNI's one-shot strategies over pocketnas's cells: genotype picks and whole searches."""

from __future__ import annotations

import csv
import math
import sys

import pytest
import torch
from nni_helpers import TINY_SEARCH, require_nni

from pocketnas.cli import main
from pocketnas.search_space.choices import (
    EDGES_PER_NODE,
    candidate_operations,
    genotype_from_sample,
    inputs_label,
    operation_label,
)
from pocketnas.search_space.genotype import load_genotype


def _tiny_space():
    require_nni()
    from pocketnas.searchers.nni_space import FaceModelSpace

    return FaceModelSpace(
        10,
        channels=4,
        layers=4,
        nodes=3,
        stem_multiplier=3,
        embedding_size=16,
        image_size=32,
        operations=candidate_operations(),
    )


def _mutate(strategy_name: str):
    """Turn the tiny space into the supernet of an NNI strategy, with random choice weights."""
    space = _tiny_space()
    from nni.nas.strategy import DARTS, GumbelDARTS, Proxyless

    strategy = {"darts": DARTS, "gumbel": GumbelDARTS, "proxyless": Proxyless}[strategy_name]()
    supernet = strategy.mutate_model(space)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in supernet.named_parameters():
            if name.endswith("_arch_alpha"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return supernet


def _nni_export(supernet):
    from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

    sample: dict = {}
    for module in supernet.modules():
        if isinstance(module, BaseSuperNetModule):
            sample.update(module.export(memo=sample))
    return sample


def test_space_has_choice_per_edge_and_node():
    space = _tiny_space()
    labels = space.simplify()
    expected = set()
    for cell in ("normal", "reduce"):
        for node in range(3):
            expected.add(inputs_label(cell, node))
            expected.update(operation_label(cell, node, source) for source in range(node + 2))
    assert set(labels) == expected
    assert list(labels[operation_label("reduce", 2, 3)].values) == list(candidate_operations())
    assert labels[inputs_label("normal", 2)].n_chosen == EDGES_PER_NODE


def test_space_forward_shape():
    space = _tiny_space()
    assert space(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_darts_pick_matches_nni_export():
    from pocketnas.searchers.nni_oneshot import choice_weights, sample_from_weights

    supernet = _mutate("darts")
    ours = sample_from_weights(choice_weights(supernet), 3)
    assert ours == _nni_export(supernet)
    genotype_from_sample(ours, 3)  # a valid genotype


def test_proxyless_pick_is_most_probable():
    from pocketnas.searchers.nni_oneshot import choice_weights, sample_from_weights

    supernet = _mutate("proxyless")
    weights = choice_weights(supernet)
    sample = sample_from_weights(weights, 3)
    for label, probabilities in weights.items():
        ranked = sorted(probabilities, key=lambda key: -probabilities[key])
        if label.endswith("_inputs"):
            assert sample[label] == sorted(ranked[:EDGES_PER_NODE])
        else:
            assert sample[label] == ranked[0]
    assert sample_from_weights(choice_weights(supernet), 3) == sample


def test_gumbel_weights_have_no_noise():
    from pocketnas.searchers.nni_oneshot import choice_weights

    supernet = _mutate("gumbel")
    first = choice_weights(supernet)
    assert choice_weights(supernet) == first
    for probabilities in first.values():
        assert math.isclose(sum(probabilities.values()), 1.0, rel_tol=1e-6)


def _search_args(face_data, out, searcher: str) -> list[str]:
    args = ["-q", "search", "--searcher", searcher, "--data", str(face_data), "--out", str(out)]
    return [*args, "--preset", str(TINY_SEARCH), "--epochs", "2", "--steps-per-epoch", "2"]


@pytest.mark.slow
@pytest.mark.parametrize("searcher", ["nni-darts", "nni-gumbel", "nni-proxyless"])
def test_nni_searcher_writes_genotype(face_data, tmp_path, searcher):
    require_nni()
    run = tmp_path / "run"
    assert main(_search_args(face_data, run, searcher)) == 0

    genotype = load_genotype(run / "genotype.json")
    assert genotype.nodes == 2
    for cell in (genotype.normal, genotype.reduce):
        for node_index, node in enumerate(cell):
            assert len({source for _, source in node}) == EDGES_PER_NODE
            assert all(op in candidate_operations() for op, _ in node)
            assert all(0 <= source < node_index + 2 for _, source in node)
    assert load_genotype(run / "genotypes" / "epoch_002.json") == genotype
    assert (run / "alphas" / "epoch_001.json").is_file()
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    for row in rows:
        assert 0.0 <= float(row["val_accuracy"]) <= 1.0
        assert float(row["train_loss"]) > 0
    assert "order: first" in (run / "config.yaml").read_text()
    assert not (run / "checkpoints").exists()  # these runs cannot resume


def test_nni_searcher_missing_nni(face_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "nni", None)
    assert main(_search_args(face_data, tmp_path / "run", "nni-darts")) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert "--searcher nni-darts needs NNI 3.0" in error[0]
    assert "scripts/setup.sh --dev" in error[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--resume"], "cannot resume"),
        (["--order", "second"], "first-order gradients only"),
        (["--arch-gradient", "authors"], "supports only --arch-gradient darts"),
    ],
)
def test_nni_searcher_rejects_options(face_data, tmp_path, capsys, extra, message):
    assert main([*_search_args(face_data, tmp_path / "run", "nni-gumbel"), *extra]) == 2
    assert message in capsys.readouterr().err
