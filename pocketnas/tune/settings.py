"""Settings of a tuning study, stored in the study so that every worker tunes the same thing.

The settings that shape the trials (objective, cost, pruner, proxy schedule, search space,
genotype and the base retraining preset) and the heartbeat settings that decide when a worker
counts as dead are written into the study's user attributes when the study is created. A
worker that joins with `resume` takes them from there, and an option that it gives anyway must
agree with the stored value.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pocketnas.config import RetrainConfig, from_mapping, load_preset
from pocketnas.errors import ConfigError
from pocketnas.search_space.genotype import Genotype, load_genotype
from pocketnas.tune.space import (
    DEFAULT_EMBEDDING_SIZES,
    DEFAULT_WIDTHS,
    check_space,
    parse_widths,
)

OBJECTIVES = ("multi", "accuracy")
COSTS = ("mflops", "params")
PRUNERS = ("none", "median", "hyperband")
DEFAULT_PRESET = "pocketnet-s128"
DEFAULT_PROXY_EPOCHS = 2
DEFAULT_HEARTBEAT_INTERVAL = 30  # seconds
DEFAULT_GRACE_PERIOD = 120  # seconds
SETTINGS_KEY = "pocketnas_tune"  # study user attribute that stores the settings
SETTINGS_VERSION = 1
_T = TypeVar("_T")
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass
class TuneRequest:
    """The options of one worker. Fields left None take the study's or the default value."""

    study: str
    data: str
    out: str
    trials: int
    storage: str | None = None  # database URL; None: sqlite:///OUT/tune.db
    bins: list[str] = field(default_factory=list)  # empty: DATA/verification.bin
    resume: bool = False  # join an existing study instead of creating it
    preset: str | None = None  # base retraining preset (default pocketnet-s128)
    genotype: str | None = None  # genotype file (default: the preset's genotype)
    objective: str | None = None  # "multi" (default) or "accuracy"
    cost: str | None = None  # "mflops" (default) or "params"
    pruner: str | None = None  # "none", "median" or "hyperband"
    proxy_epochs: int | None = None
    proxy_steps: int | None = None  # cap on steps per proxy epoch
    widths: str | None = None  # CHANNELS:CELLS,... (default: DEFAULT_WIDTHS)
    embedding_sizes: list[int] | None = None
    budget: float | None = None  # cost limit for the exported trial, in the cost's unit
    heartbeat_interval: int | None = None  # seconds between heartbeats of a running trial
    grace_period: int | None = None  # seconds without a heartbeat before a trial counts as dead
    seed: int | None = None  # sampler seed of this worker (None: random)


@dataclass
class TuneSettings:
    """The settings shared by all workers of a study."""

    objective: str
    cost: str
    pruner: str
    proxy_epochs: int
    proxy_steps: int | None
    widths: dict[int, int]
    embedding_sizes: list[int]
    genotype: str  # the authors' Genotype(...) text form
    base: RetrainConfig  # the full schedule that the exported preset keeps
    # Study settings too, because all workers must detect a dead worker by the same rule.
    heartbeat_interval: int = DEFAULT_HEARTBEAT_INTERVAL
    grace_period: int = DEFAULT_GRACE_PERIOD

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-ready data (JSON object keys must be strings)."""
        base = dataclasses.asdict(self.base)
        return {
            "version": SETTINGS_VERSION,
            "objective": self.objective,
            "cost": self.cost,
            "pruner": self.pruner,
            "proxy_epochs": self.proxy_epochs,
            "proxy_steps": self.proxy_steps,
            "widths": [[channels, layers] for channels, layers in self.widths.items()],
            "embedding_sizes": list(self.embedding_sizes),
            "genotype": self.genotype,
            "base": base,
            "heartbeat_interval": self.heartbeat_interval,
            "grace_period": self.grace_period,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str) -> TuneSettings:
        """Rebuild settings written by `to_dict`.

        Raises:
            ConfigError: the data is not such settings; the message names `source`.
        """
        if not isinstance(data, dict) or data.get("version") != SETTINGS_VERSION:
            raise ConfigError(f"{source}: no pocketnas tune settings of version {SETTINGS_VERSION}")
        try:
            settings = cls(
                objective=str(data["objective"]),
                cost=str(data["cost"]),
                pruner=str(data["pruner"]),
                proxy_epochs=int(data["proxy_epochs"]),
                proxy_steps=None if data["proxy_steps"] is None else int(data["proxy_steps"]),
                widths={int(c): int(n) for c, n in data["widths"]},
                embedding_sizes=[int(e) for e in data["embedding_sizes"]],
                genotype=str(data["genotype"]),
                base=from_mapping(RetrainConfig, dict(data["base"]), f"{source}: base preset"),
                heartbeat_interval=int(data.get("heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL)),
                grace_period=int(data.get("grace_period", DEFAULT_GRACE_PERIOD)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: damaged pocketnas tune settings ({exc!r})") from None
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check the settings.

        Raises:
            ConfigError: a value is out of range, or pruning is combined with two objectives.
        """
        _check_choice("objective", self.objective, OBJECTIVES)
        _check_choice("cost", self.cost, COSTS)
        _check_choice("pruner", self.pruner, PRUNERS)
        if self.objective == "multi" and self.pruner != "none":
            raise ConfigError(
                f"pruner {self.pruner!r} needs --objective accuracy: Optuna prunes only "
                "single-objective trials (Trial.report takes one value)"
            )
        if self.proxy_epochs <= 0:
            raise ConfigError(f"proxy epochs must be positive, got {self.proxy_epochs}")
        if self.proxy_steps is not None and self.proxy_steps <= 0:
            raise ConfigError(f"proxy steps must be positive, got {self.proxy_steps}")
        check_space(self.widths, self.embedding_sizes)
        if self.heartbeat_interval <= 0 or self.grace_period <= self.heartbeat_interval:
            raise ConfigError(
                "the heartbeat interval must be positive and shorter than the grace period; got "
                f"{self.heartbeat_interval} s and {self.grace_period} s"
            )
        self.base.validate()
        _check_derived(self.base)

    def parsed_genotype(self) -> Genotype:
        return Genotype.from_text(self.genotype)


def _check_derived(base: RetrainConfig) -> None:
    if base.arch != "derived":
        raise ConfigError(
            f"tuning sets the width of a genotype's derived network, but the base preset "
            f"trains {base.arch}; choose a PocketNet preset such as {DEFAULT_PRESET}"
        )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def check_study_name(name: str) -> None:
    """Check that a study name can name a folder.

    Raises:
        ConfigError: the name is empty, too long or contains other characters than letters,
            digits, '.', '_' and '-'.
    """
    if not _STUDY_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid study name {name!r}: use up to 100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def _requested_base(request: TuneRequest) -> RetrainConfig | None:
    return load_preset(RetrainConfig, request.preset) if request.preset is not None else None


def _requested_genotype(request: TuneRequest, base: RetrainConfig) -> str | None:
    if request.genotype is not None:
        return load_genotype(request.genotype).to_text()
    if base.genotype is None:
        return None
    return Genotype.from_text(base.genotype).to_text()


def new_settings(request: TuneRequest) -> TuneSettings:
    """Resolve the settings of a new study from the request and the defaults.

    Raises:
        ConfigError: an invalid option, preset or genotype, or a preset without a genotype and
            no `genotype` file.
    """
    base = _requested_base(request) or load_preset(RetrainConfig, DEFAULT_PRESET)
    _check_derived(base)
    genotype = _requested_genotype(request, base)
    if genotype is None:
        raise ConfigError("the base preset carries no genotype; give one with --genotype FILE")
    objective = _or_default(request.objective, "multi")
    default_pruner = "median" if objective == "accuracy" else "none"
    widths = dict(DEFAULT_WIDTHS) if request.widths is None else parse_widths(request.widths)
    settings = TuneSettings(
        objective=objective,
        cost=_or_default(request.cost, "mflops"),
        pruner=_or_default(request.pruner, default_pruner),
        proxy_epochs=_or_default(request.proxy_epochs, DEFAULT_PROXY_EPOCHS),
        proxy_steps=request.proxy_steps,
        widths=widths,
        embedding_sizes=list(_or_default(request.embedding_sizes, DEFAULT_EMBEDDING_SIZES)),
        genotype=genotype,
        base=base,
        heartbeat_interval=_or_default(request.heartbeat_interval, DEFAULT_HEARTBEAT_INTERVAL),
        grace_period=_or_default(request.grace_period, DEFAULT_GRACE_PERIOD),
    )
    settings.validate()
    return settings


def _or_default(value: _T | None, default: _T) -> _T:
    """Return `value` unless it is None, so that validation rejects zero and empty values."""
    return default if value is None else value


def joined_settings(request: TuneRequest, stored: TuneSettings, study: str) -> TuneSettings:
    """Check the options a joining worker gives against the study's stored settings.

    Raises:
        ConfigError: an option differs from the study's value; the message names both.
    """
    requested: dict[str, Any] = {
        "objective": request.objective,
        "cost": request.cost,
        "pruner": request.pruner,
        "proxy_epochs": request.proxy_epochs,
        "proxy_steps": request.proxy_steps,
        "widths": None if request.widths is None else parse_widths(request.widths),
        "embedding_sizes": request.embedding_sizes,
        "heartbeat_interval": request.heartbeat_interval,
        "grace_period": request.grace_period,
    }
    base = _requested_base(request)
    if base is not None:
        requested["base"] = base
    if request.genotype is not None:
        requested["genotype"] = _requested_genotype(request, base or stored.base)
    for name, value in requested.items():
        if value is None:
            continue
        stored_value = getattr(stored, name)
        if name == "embedding_sizes":
            value, stored_value = sorted(value), sorted(stored_value)
        if value == stored_value:
            continue
        if name == "base":
            difference = _config_difference(stored_value, value)
        else:
            difference = f"study: {_short(stored_value)}, given: {_short(value)}"
        option = {"base": "preset"}.get(name, name.replace("_", "-"))
        raise ConfigError(
            f"study {study!r} was created with another --{option} ({difference}); leave the "
            "option out to use the study's, or start a new study"
        )
    return stored


def _config_difference(stored: RetrainConfig, requested: RetrainConfig) -> str:
    names = [
        f.name
        for f in dataclasses.fields(RetrainConfig)
        if getattr(stored, f.name) != getattr(requested, f.name)
    ]
    return "keys that differ: " + ", ".join(names)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
