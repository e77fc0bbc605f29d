from __future__ import annotations

import pytest
import torch

from pocketnas.errors import GenotypeError
from pocketnas.search_space.genotype import Genotype
from pocketnas.search_space.networks import FaceNetwork, SearchNetwork, reduction_indices
from pocketnas.search_space.operations import OPERATIONS, PRIMITIVES, build_operation
from pocketnas.search_space.published import POCKETNET_GENOTYPE
from pocketnas.tools.flops import count_complexity


def test_network_matches_published_preset(published, published_preset):
    name = published_preset
    reference = published["presets"][name]
    net = FaceNetwork(
        POCKETNET_GENOTYPE,
        channels=reference["init_channels"],
        layers=reference["layers"],
        stem_multiplier=reference["stem_multiplier"],
        embedding_size=reference["embedding_size"],
    )
    shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert shapes == reference["state_dict"]
    complexity = count_complexity(net)
    assert complexity.params == reference["params"]
    assert round(complexity.mflops, 2) == pytest.approx(reference["mflops"], abs=0.01)


def test_reduction_positions():
    assert reduction_indices(18) == (6, 12, 17)
    assert reduction_indices(9) == (3, 6, 8)
    assert reduction_indices(8) == (2, 5, 7)
    with pytest.raises(ValueError):
        reduction_indices(3)


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
def test_every_operation_keeps_width_and_strides(name, stride):
    op = build_operation(name, 8, stride, affine=True)
    out = op(torch.randn(2, 8, 16, 16))
    assert out.shape == (2, 8, 16 // stride, 16 // stride)


def test_unknown_operation_lists_valid_names():
    with pytest.raises(GenotypeError, match="dw_conv_3x3"):
        build_operation("conv_9x9", 8, 1, True)
    assert set(PRIMITIVES) <= set(OPERATIONS)


def test_tiny_supernet_gives_every_parameter_a_gradient():
    net = SearchNetwork(
        num_classes=5, channels=4, layers=4, nodes=2, embedding_size=16, image_size=32
    )
    images = torch.randn(4, 3, 32, 32)
    loss = torch.nn.functional.cross_entropy(net(images), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert missing == []
    assert net.alpha_normal.grad.abs().sum() > 0
    weight_ids = {id(p) for p in net.weights()}
    assert all(id(a) not in weight_ids for a in net.alphas())
    assert len(net.weights()) + 2 == len(list(net.parameters()))


def test_face_network_embeds_small_images():
    net = FaceNetwork(POCKETNET_GENOTYPE, channels=4, layers=4, embedding_size=32, image_size=32)
    out = net(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 32)
    loss = out.pow(2).mean()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_face_network_accepts_custom_genotype():
    genotype = Genotype(
        normal=((("skip_connect", 0), ("avg_pool_3x3", 1)), (("none", 2), ("dw_conv_7x7", 1))),
        normal_concat=(2, 3),
        reduce=(
            (("max_pool_3x3", 0), ("skip_connect", 1)),
            (("dw_conv_5x5", 2), ("skip_connect", 0)),
        ),
        reduce_concat=(2, 3),
    )
    net = FaceNetwork(genotype, channels=4, layers=4, embedding_size=16, image_size=32)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 16)
