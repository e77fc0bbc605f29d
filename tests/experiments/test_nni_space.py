"""Search spaces generated from the registries, and samples mapped back to genotypes."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from nni_helpers import REPOSITORY
from torch import nn

from pocketnas.cli import main
from pocketnas.config import RetrainConfig, load_preset
from pocketnas.errors import GenotypeError
from pocketnas.experiments.space import (
    genotype_search_space,
    search_space_json,
    width_embedding_search_space,
)
from pocketnas.retrain.models import config_genotype
from pocketnas.search_space.choices import (
    candidate_operations,
    genotype_from_sample,
    inputs_label,
    operation_label,
    sample_from_genotype,
)
from pocketnas.search_space.genotype import Genotype
from pocketnas.search_space.operations import OPERATIONS, PRIMITIVES, register_operation
from pocketnas.search_space.widths import EMBEDDING_SIZES, WIDTH_CELLS, cells_for_width


@pytest.fixture
def extra_operation():
    """Register an operation for one test and remove it afterwards."""
    name = "test_only_identity"

    @register_operation(name)
    def build(channels: int, stride: int, affine: bool) -> nn.Module:
        return nn.Identity() if stride == 1 else nn.AvgPool2d(1, stride)

    try:
        yield name
    finally:
        del OPERATIONS[name]


def test_candidates_are_registry_without_none():
    candidates = candidate_operations()
    assert "none" not in candidates
    assert set(candidates) == set(OPERATIONS) - {"none"}
    assert set(candidates) == set(PRIMITIVES) - {"none"}


def test_genotype_space_labels_and_values():
    nodes = 4
    space = genotype_search_space(nodes)
    expected_labels = set()
    for cell in ("normal", "reduce"):
        for node in range(nodes):
            expected_labels.add(inputs_label(cell, node))
            expected_labels.update(operation_label(cell, node, j) for j in range(node + 2))
    assert set(space) == expected_labels
    # 2 + 3 + 4 + 5 edges and 4 input choices per cell.
    assert len(space) == 2 * (14 + 4)
    for label, spec in space.items():
        assert spec["_type"] == "choice"
        if label.endswith("_inputs"):
            node = int(label.split("_")[1].removeprefix("node"))
            pairs = [",".join(map(str, p)) for p in itertools.combinations(range(node + 2), 2)]
            assert spec["_value"] == pairs
        else:
            assert spec["_value"] == list(candidate_operations())


def test_genotype_space_follows_registry(extra_operation):
    space = genotype_search_space(2)
    assert extra_operation in space[operation_label("normal", 1, 2)]["_value"]
    assert extra_operation in space[operation_label("reduce", 0, 0)]["_value"]


def test_genotype_space_is_valid_for_nni_tuners():
    # NNI's search space validation admits only numbers and strings as choice values.
    for spec in genotype_search_space(4).values():
        assert all(isinstance(value, (str, int, float)) for value in spec["_value"])


def test_shipped_spaces_match_generators():
    shipped = REPOSITORY / "experiments"
    assert (shipped / "nas_space.json").read_text() == search_space_json("genotype", 4)
    assert (shipped / "tune_space.json").read_text() == search_space_json("width-embedding")


def test_width_space_reads_width_table():
    space = width_embedding_search_space()
    assert space["channels"]["_value"] == list(WIDTH_CELLS)
    assert space["embedding_size"]["_value"] == list(EMBEDDING_SIZES)


def test_width_table_keeps_pocketnet_pairs():
    assert cells_for_width(16) == 18
    assert cells_for_width(32) == 9
    for channels, cells in WIDTH_CELLS.items():
        assert channels * cells == 288


def test_published_genotype_round_trip():
    genotype = config_genotype(load_preset(RetrainConfig, "pocketnet-s128"))
    assert genotype is not None
    sample = sample_from_genotype(genotype)
    assert set(sample) == set(genotype_search_space(genotype.nodes))
    rebuilt = genotype_from_sample(sample, genotype.nodes)
    for cell in ("normal", "reduce"):
        original = [sorted(node, key=lambda edge: edge[1]) for node in getattr(genotype, cell)]
        assert [list(node) for node in getattr(rebuilt, cell)] == original
    assert rebuilt.normal_concat == genotype.normal_concat
    assert rebuilt.reduce_concat == genotype.reduce_concat


def test_random_samples_round_trip():
    rng = random.Random(0)
    space = genotype_search_space(3)
    for _ in range(20):
        sample = {label: rng.choice(spec["_value"]) for label, spec in space.items()}
        genotype = genotype_from_sample(sample, 3)
        again = sample_from_genotype(genotype)
        for cell in ("normal", "reduce"):
            for node in range(3):
                label = inputs_label(cell, node)
                assert again[label] == sample[label]
                for source in map(int, sample[label].split(",")):
                    edge_label = operation_label(cell, node, source)
                    assert again[edge_label] == sample[edge_label]
        assert genotype_from_sample(again, 3) == genotype


def test_sample_accepts_index_lists():
    space = genotype_search_space(2)
    sample = {label: spec["_value"][-1] for label, spec in space.items()}
    as_lists = {
        label: [int(s) for s in value.split(",")] if label.endswith("_inputs") else value
        for label, value in sample.items()
    }
    assert genotype_from_sample(as_lists, 2) == genotype_from_sample(sample, 2)


def test_sample_genotype_is_wired_as_chosen():
    sample = {
        inputs_label("normal", 0): "0,1",
        operation_label("normal", 0, 0): "dw_conv_3x3",
        operation_label("normal", 0, 1): "skip_connect",
        inputs_label("normal", 1): "0,2",
        operation_label("normal", 1, 0): "max_pool_3x3",
        operation_label("normal", 1, 2): "dw_conv_7x7",
        inputs_label("reduce", 0): [1, 0],
        operation_label("reduce", 0, 0): "avg_pool_3x3",
        operation_label("reduce", 0, 1): "dw_conv_5x5",
        inputs_label("reduce", 1): "1,2",
        operation_label("reduce", 1, 1): "dw_conv_1x1",
        operation_label("reduce", 1, 2): "skip_connect",
    }
    genotype = genotype_from_sample(sample, 2)
    assert genotype == Genotype(
        normal=(
            (("dw_conv_3x3", 0), ("skip_connect", 1)),
            (("max_pool_3x3", 0), ("dw_conv_7x7", 2)),
        ),
        normal_concat=(2, 3),
        reduce=(
            (("avg_pool_3x3", 0), ("dw_conv_5x5", 1)),
            (("dw_conv_1x1", 1), ("skip_connect", 2)),
        ),
        reduce_concat=(2, 3),
    )


@pytest.mark.parametrize(
    ("label", "value", "message"),
    [
        ("normal_node1_inputs", "0,0", "invalid inputs"),
        ("normal_node1_inputs", "0,3", "invalid inputs"),
        ("normal_node1_inputs", "zero", "invalid inputs"),
        ("normal_node1_op0", "none", "invalid operation"),
        ("normal_node1_op0", "conv_9x9", "invalid operation"),
    ],
)
def test_sample_with_bad_value_rejected(label, value, message):
    space = genotype_search_space(2)
    sample = {name: spec["_value"][0] for name, spec in space.items()}
    sample["normal_node1_inputs"] = "0,1"
    sample[label] = value
    with pytest.raises(GenotypeError, match=message):
        genotype_from_sample(sample, 2)


def test_sample_with_missing_label_rejected():
    space = genotype_search_space(2)
    sample = {name: spec["_value"][0] for name, spec in space.items()}
    del sample[operation_label("reduce", 1, 0)]
    with pytest.raises(GenotypeError, match="reduce_node1_op0"):
        genotype_from_sample(sample, 2)


def test_genotype_outside_space_rejected():
    three_edges = Genotype(
        normal=(
            (("dw_conv_3x3", 0), ("dw_conv_3x3", 1)),
            (("dw_conv_3x3", 0), ("dw_conv_3x3", 1), ("skip_connect", 2)),
        ),
        normal_concat=(2, 3),
        reduce=((("dw_conv_3x3", 0), ("dw_conv_3x3", 1)), (("dw_conv_3x3", 0), ("dw_conv_3x3", 1))),
        reduce_concat=(2, 3),
    )
    with pytest.raises(GenotypeError, match="2 different inputs"):
        sample_from_genotype(three_edges)


def test_experiments_space_command(tmp_path, capsys):
    target = tmp_path / "space.json"
    assert main(["experiments", "space", "--nodes", "3", "--out", str(target)]) == 0
    assert json.loads(target.read_text()) == genotype_search_space(3)
    target = tmp_path / "tune.json"
    assert main(["experiments", "space", "--space", "width-embedding", "--out", str(target)]) == 0
    assert json.loads(target.read_text()) == width_embedding_search_space()


def test_experiments_space_command_bad_folder(tmp_path, capsys):
    target = tmp_path / "missing" / "space.json"
    assert main(["experiments", "space", "--out", str(target)]) == 2
    assert "does not exist" in capsys.readouterr().err
