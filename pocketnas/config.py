"""Typed configuration: dataclasses with commented defaults, YAML presets and overrides.

A preset is a YAML file shipped in `pocketnas/presets/` (or any YAML file a user names) whose keys
are the fields of one config dataclass. Presets are parsed with `yaml.safe_load`, so a preset can
hold data only, never code. Every run folder gets the resolved config (with `CONFIG_VERSION`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pocketnas.errors import ConfigError

CONFIG_VERSION = 1


@dataclass
class SearchConfig:
    """DARTS search settings. Defaults are PocketNet's search settings on CASIA-WebFace."""

    channels: int = 16  # initial channels of the supernet
    layers: int = 8  # cells; reductions at L/3, 2L/3 and L-1
    nodes: int = 4  # intermediate nodes per cell
    stem_multiplier: int = 3
    embedding_size: int = 128
    image_size: int = 112  # images are resized to this side if they differ
    epochs: int = 50
    batch_size: int = 128
    order: str = "first"  # "first" or "second" order architecture gradient
    # "darts": alpha follows the DARTS gradient only; "authors": the PocketNet authors' loop,
    # which also adds the training-loss gradient of alpha.
    arch_gradient: str = "darts"
    fused_cells: bool = True  # False runs every candidate operation as its own module
    w_lr: float = 0.1  # SGD, cosine annealed to w_lr_min
    w_lr_min: float = 0.004
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    alpha_lr: float = 1.2e-3  # Adam on the architecture weights
    alpha_beta1: float = 0.5
    alpha_beta2: float = 0.999
    alpha_weight_decay: float = 1e-3
    steps_per_epoch: int | None = None  # cap on steps per epoch (None: one pass over the data)
    workers: int = 2  # DataLoader worker processes
    seed: int = 0

    def validate(self) -> None:
        if self.order not in ("first", "second"):
            raise ConfigError(f"order must be 'first' or 'second', got {self.order!r}")
        if self.arch_gradient not in ("darts", "authors"):
            raise ConfigError(
                f"arch_gradient must be 'darts' or 'authors', got {self.arch_gradient!r}"
            )
        _check_positive(self, ("channels", "layers", "nodes", "epochs", "batch_size", "image_size"))
        if self.layers < 4:
            raise ConfigError(
                f"layers must be at least 4 (three reduction cells), got {self.layers}"
            )


@dataclass
class RetrainConfig:
    """Retraining settings. Defaults are PocketNet's MS1MV2 schedule for PocketNetS-128."""

    # "derived": the network of a cell genotype (PocketNet); "iresnet18" ... "iresnet200": an
    # IResNet, as the teachers of knowledge distillation.
    arch: str = "derived"
    channels: int = 16
    layers: int = 18
    stem_multiplier: int = 4
    embedding_size: int = 128
    image_size: int = 112
    epochs: int = 26
    batch_size: int = 128  # per process; the global batch is batch_size * processes
    lr: float = 0.1  # for a global batch of lr_reference_batch; scaled linearly with the real one
    lr_reference_batch: int = 512
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"  # "step": divide by 1/lr_gamma at milestones; "cosine": to lr_min
    milestones: list[int] = field(default_factory=lambda: [8, 14, 20, 25])  # epochs, lr / 10
    lr_gamma: float = 0.1
    lr_min: float = 0.0  # end of the cosine schedule, as a fraction of the base learning rate
    warmup_epochs: float = 0.0  # linear warm-up from 0, in epochs
    grad_clip: float = 5.0  # gradient-norm clip; 0 turns it off
    head: str = "arcface"  # "arcface", "cosface" or "combined"
    margin_s: float = 64.0  # logit scale
    margin_m: float = 0.5  # ArcFace angular margin (radians) or CosFace cosine margin
    combined_margins: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.0])  # m1, m2, m3
    easy_margin: bool = False
    # Knowledge distillation: "none", "template" (one fixed teacher) or "multi-step" (student
    # epoch e learns from the teacher's checkpoint of epoch e).
    kd: str = "none"
    kd_weight: float = 100.0  # weight of the MSE between L2-normalised embeddings
    # "template": a checkpoint file; "multi-step": the teacher's run folder, which contains
    # checkpoints/epoch_NNN.pt
    teacher: str | None = None
    teacher_arch: str | None = None  # architecture of a bare teacher state dict, e.g. iresnet100
    steps_per_epoch: int | None = None  # cap on steps per epoch (None: one pass over the data)
    eval_every_steps: int | None = None  # verification every N steps, besides each epoch's end
    checkpoint_every_steps: int | None = None  # checkpoints/last.pt every N steps, besides epochs
    log_every_steps: int = 20  # loss and speed to the progress bar and TensorBoard
    precision: str = "auto"  # "auto" (bf16 on GPUs that have it, else fp32), "fp32", "bf16", "fp16"
    channels_last: bool = True
    device: str = "auto"  # "auto" (the local GPU if any), "cpu", "cuda"
    deterministic: bool = False  # deterministic kernels (for exact resume on GPUs)
    workers: int = 2
    seed: int = 0
    # The cell genotype in the authors' `Genotype(...)` text form, parsed and never evaluated;
    # None means one must be given (`--genotype`) for the derived network.
    genotype: str | None = None

    def validate(self) -> None:
        _check_positive(
            self, ("channels", "layers", "epochs", "batch_size", "image_size", "log_every_steps")
        )
        if self.genotype is not None and not isinstance(self.genotype, str):
            raise ConfigError(f"genotype must be Genotype(...) text, got {self.genotype!r}")
        if self.layers < 4:
            raise ConfigError(
                f"layers must be at least 4 (three reduction cells), got {self.layers}"
            )
        if self.embedding_size <= 0:
            raise ConfigError(f"embedding_size must be positive, got {self.embedding_size}")
        archs = ("derived", "iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200")
        _check_choice(self, "arch", archs)
        _check_choice(self, "schedule", ("step", "cosine"))
        _check_choice(self, "head", ("arcface", "cosface", "combined"))
        _check_choice(self, "kd", ("none", "template", "multi-step"))
        _check_choice(self, "precision", ("auto", "fp32", "bf16", "fp16"))
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.arch.startswith("iresnet") and self.image_size % 16:
            raise ConfigError(
                f"{self.arch} needs an image_size divisible by 16, got {self.image_size}"
            )
        if len(self.combined_margins) != 3:
            raise ConfigError(
                f"combined_margins must be [m1, m2, m3], got {self.combined_margins!r}"
            )
        if self.kd != "none" and not self.teacher:
            raise ConfigError(f"kd {self.kd!r} needs a teacher (--teacher)")
        for name in ("steps_per_epoch", "eval_every_steps", "checkpoint_every_steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{name} must be a positive integer or null, got {value!r}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ConfigError(f"warmup_epochs must lie in [0, epochs), got {self.warmup_epochs}")
        if self.kd_weight < 0 or self.grad_clip < 0 or self.lr <= 0:
            raise ConfigError("lr must be positive, and kd_weight and grad_clip not negative")


@dataclass
class SynthConfig:
    """Synthetic face identities for the demo."""

    identities: int = 300
    images_per_identity: int = 20
    pairs: int = 1200  # verification pairs of identities not in the training set
    image_size: int = 112
    seed: int = 0
    workers: int = 2  # drawing processes; the files are identical for any count


@dataclass
class DemoConfig:
    """The whole pipeline on synthetic identities, sized for two CPU cores."""

    synth: SynthConfig = field(default_factory=SynthConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    # The teacher: a wider network of the searched genotype (or an IResNet), trained first.
    teacher: RetrainConfig = field(default_factory=RetrainConfig)
    # The student, trained twice: with multi-step distillation from the teacher, and without.
    retrain: RetrainConfig = field(default_factory=RetrainConfig)


ConfigT = TypeVar("ConfigT", SearchConfig, RetrainConfig, DemoConfig, SynthConfig)


def _check_choice(config: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_positive(config: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def preset_names() -> list[str]:
    """Names of the presets shipped with pocketnas."""
    folder = resources.files("pocketnas") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_preset(name_or_path: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    text_path = os.fspath(name_or_path)
    path = Path(text_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path}: preset file not found")
        source = str(path)
        text = path.read_text(encoding="utf-8")
    else:
        resource = resources.files("pocketnas") / "presets" / f"{text_path}.yaml"
        if not resource.is_file():
            raise ConfigError(
                f"unknown preset {text_path!r}; shipped presets: {', '.join(preset_names())}"
            )
        source = f"preset {text_path}"
        text = resource.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a preset must be a YAML mapping")
    return source, data


def from_mapping(cls: type[ConfigT], data: dict[str, Any], source: str) -> ConfigT:
    """Build a config dataclass from a mapping, rejecting unknown keys and wrong types."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
            f"valid keys: {', '.join(known)}"
        )
    values: dict[str, Any] = {}
    defaults = cls()
    for name, value in data.items():
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {name} must be a mapping")
            values[name] = from_mapping(type(default), value, f"{source}: {name}")  # type: ignore[type-var]
        else:
            values[name] = _coerce(name, value, default, source)
    return cls(**values)


def _coerce(name: str, value: Any, default: Any, source: str) -> Any:
    if value is None:
        return None
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {name} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {name} must be a list, got {value!r}")
        return value
    if default is not None and not isinstance(value, type(default)):
        raise ConfigError(f"{source}: {name} must be {type(default).__name__}, got {value!r}")
    return value


def load_preset(cls: type[ConfigT], name_or_path: str | os.PathLike[str] | None) -> ConfigT:
    """Load a preset (shipped name or YAML path) as `cls`; None gives the defaults."""
    if name_or_path is None:
        return cls()
    source, data = _read_preset(name_or_path)
    kind = data.pop("kind", None)
    expected = cls.__name__.removesuffix("Config").lower()
    if kind is not None and kind != expected:
        raise ConfigError(f"{source}: is a {kind!r} preset, but a {expected!r} preset is needed")
    data.pop("config_version", None)
    return from_mapping(cls, data, source)


def override(config: ConfigT, **changes: Any) -> ConfigT:
    """Return a copy of `config` with the changes that are not None applied."""
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})


def to_dict(config: Any) -> dict[str, Any]:
    """Return the resolved config with kind and version, ready for YAML or JSON."""
    data = dataclasses.asdict(config)
    return {
        "kind": type(config).__name__.removesuffix("Config").lower(),
        "config_version": CONFIG_VERSION,
        **data,
    }


def save_config(path: str | os.PathLike[str], config: Any) -> None:
    """Write the resolved config as YAML, atomically."""
    from pocketnas.fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
