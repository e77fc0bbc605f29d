"""IResNet teachers against insightface's published parameter counts and state-dict layout."""

from __future__ import annotations

import pytest
import torch

from pocketnas.retrain.iresnet import IRESNET_ARCHS, build_iresnet

TEACHERS = [
    "iresnet18-128",
    "iresnet18-256",
    "iresnet18-512",
    "iresnet50-128",
    "iresnet50-256",
    "iresnet50-512",
    "iresnet100-128",
    "iresnet100-256",
    "iresnet100-512",
]


def _build(name: str) -> torch.nn.Module:
    arch, embedding = name.split("-")
    return build_iresnet(arch, int(embedding))


@pytest.mark.parametrize("name", TEACHERS)
def test_teacher_parameter_count(published, name):
    model = _build(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == published["teachers"][name]["params"]


@pytest.mark.parametrize("name", ["iresnet100-128", "iresnet100-256", "iresnet100-512"])
def test_iresnet100_state_dict_layout(published, name):
    model = _build(name)
    shapes = {key: list(t.shape) for key, t in model.state_dict().items()}
    assert list(shapes) == list(published["teachers"][name]["state_dict"])
    assert shapes == published["teachers"][name]["state_dict"]


def test_published_iresnet100_state_dict_loads(published):
    reference = published["teachers"]["iresnet100-512"]["state_dict"]
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in reference.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        else:
            state[key] = torch.randn(shape, generator=generator)
    model = build_iresnet("iresnet100", 512)
    result = model.load_state_dict(state, strict=True)
    assert result.missing_keys == []
    assert result.unexpected_keys == []
    assert torch.equal(model.fc.weight, state["fc.weight"])


def test_iresnet34_depth():
    model = build_iresnet("iresnet34", 512)
    blocks = [len(getattr(model, f"layer{i}")) for i in range(1, 5)]
    assert blocks == [3, 4, 6, 3]


def test_iresnet18_embeds_112_faces():
    model = build_iresnet("iresnet18", 128).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, 128)
    assert torch.isfinite(out).all()


def test_features_scale_is_frozen():
    model = build_iresnet("iresnet18", 128)
    assert not model.features.weight.requires_grad
    assert torch.equal(model.features.weight, torch.ones(128))
    assert model.features.bias.requires_grad


def test_smaller_images_shrink_fc():
    model = build_iresnet("iresnet18", 64, image_size=64)
    assert model.fc.in_features == 512 * 4 * 4
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 64)


@pytest.mark.parametrize("arch", ["resnet50", "iresnet", "iresnet101", "iresnetX"])
def test_unknown_teacher_rejected(arch):
    with pytest.raises(ValueError, match="unknown teacher architecture"):
        build_iresnet(arch)


def test_arch_names_listed():
    assert {"iresnet18", "iresnet34", "iresnet50", "iresnet100"} <= set(IRESNET_ARCHS)
