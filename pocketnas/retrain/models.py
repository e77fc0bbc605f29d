"""The networks that retraining builds: a genotype's derived network or an IResNet teacher.

A checkpoint records the network as a small dictionary (`network_spec`), so evaluation, export
and distillation rebuild it without the configuration that trained it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pocketnas.config import RetrainConfig
from pocketnas.errors import CheckpointError, ConfigError, PocketNasError
from pocketnas.retrain.iresnet import IRESNET_ARCHS, build_iresnet
from pocketnas.search_space.genotype import Genotype
from pocketnas.search_space.networks import FaceNetwork


def config_genotype(config: RetrainConfig) -> Genotype | None:
    """Parse the genotype that a retraining preset carries, or return None when it has none."""
    if config.genotype is None:
        return None
    try:
        return Genotype.from_text(config.genotype)
    except PocketNasError as exc:
        raise ConfigError(f"genotype of the retraining config is invalid: {exc}") from None


def network_spec(genotype: Genotype | None, config: RetrainConfig) -> dict[str, Any]:
    """Return the settings needed to rebuild the network of a checkpoint.

    Raises:
        ConfigError: the derived network is asked for without a genotype.
    """
    if config.arch != "derived":
        return {
            "arch": config.arch,
            "embedding_size": config.embedding_size,
            "image_size": config.image_size,
        }
    if genotype is None:
        raise ConfigError("the derived network needs a genotype; give one with --genotype FILE")
    return {
        "arch": "derived",
        "genotype": genotype.to_dict(),
        "channels": config.channels,
        "layers": config.layers,
        "stem_multiplier": config.stem_multiplier,
        "embedding_size": config.embedding_size,
        "image_size": config.image_size,
    }


def build_network(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a network from a `network_spec` dictionary (older specs have no "arch").

    The module has `embedding_size` and `image_size` attributes.
    """
    arch = spec.get("arch", "derived")
    if arch in IRESNET_ARCHS:
        return build_iresnet(
            arch, embedding_size=int(spec["embedding_size"]), image_size=int(spec["image_size"])
        )
    if arch != "derived":
        raise CheckpointError(f"unknown network architecture {arch!r}")
    return FaceNetwork(
        Genotype.from_dict(spec["genotype"]),
        channels=int(spec["channels"]),
        layers=int(spec["layers"]),
        stem_multiplier=int(spec["stem_multiplier"]),
        embedding_size=int(spec["embedding_size"]),
        image_size=int(spec["image_size"]),
    )


def iresnet_spec_of_state_dict(arch: str, state: dict[str, Any]) -> dict[str, Any]:
    """Return the spec of a bare IResNet state dict (insightface), read off `fc.weight`.

    Raises:
        CheckpointError: `arch` is not an IResNet or the state dict has no usable `fc.weight`.
    """
    if arch not in IRESNET_ARCHS:
        raise CheckpointError(
            f"a bare state dict needs an IResNet architecture ({', '.join(IRESNET_ARCHS)}), "
            f"got {arch!r}"
        )
    weight = state.get("fc.weight")
    if weight is None or getattr(weight, "ndim", 0) != 2:
        raise CheckpointError("state dict has no 2-d fc.weight, so it is not an IResNet")
    embedding_size, inputs = (int(n) for n in weight.shape)
    side = round((inputs / 512) ** 0.5)
    if side * side * 512 != inputs:
        raise CheckpointError(f"fc.weight has {inputs} inputs, not 512 x a square map")
    return {"arch": arch, "embedding_size": embedding_size, "image_size": side * 16}
