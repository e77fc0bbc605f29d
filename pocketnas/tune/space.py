"""The search space of a tuning study and the short proxy schedule that scores each trial.

A trial picks a width, that is the initial channels together with the number of cells that goes
with them, and an embedding size. The default width table and embedding sizes are those of
`pocketnas.search_space.widths`, which NNI's tuning experiment reads too; `--widths` replaces
the table.
"""

from __future__ import annotations

import dataclasses

from pocketnas.config import RetrainConfig
from pocketnas.errors import ConfigError
from pocketnas.search_space.widths import EMBEDDING_SIZES, WIDTH_CELLS

# The defaults of a study, shared with NNI's tuning experiment.
DEFAULT_WIDTHS: dict[int, int] = WIDTH_CELLS
DEFAULT_EMBEDDING_SIZES: tuple[int, ...] = EMBEDDING_SIZES


def parse_widths(text: str) -> dict[int, int]:
    """Parse a width table written as `CHANNELS:CELLS,...`, for example `8:36,16:18`.

    Raises:
        ConfigError: the text is not such a list, a number is not positive, a channel count
            appears twice, or a cell count is below 4 (the network has three reduction cells).
    """
    widths: dict[int, int] = {}
    for item in text.split(","):
        channels_text, sep, layers_text = item.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            channels, layers = int(channels_text), int(layers_text)
        except ValueError:
            raise ConfigError(
                f"invalid width {item.strip()!r} in {text!r}; write CHANNELS:CELLS pairs "
                "separated by commas, for example 8:36,16:18"
            ) from None
        if channels in widths:
            raise ConfigError(f"width table {text!r} names {channels} channels twice")
        widths[channels] = layers
    try:
        check_space(widths, DEFAULT_EMBEDDING_SIZES)
    except ConfigError as exc:
        raise ConfigError(f"invalid --widths {text!r}: {exc}") from None
    return widths


def check_space(widths: dict[int, int], embedding_sizes: tuple[int, ...] | list[int]) -> None:
    """Check a width table and a list of embedding sizes.

    Raises:
        ConfigError: a table or list is empty, contains a repeated or non-positive value, or a
            cell count is below 4.
    """
    if not widths:
        raise ConfigError("the width table is empty")
    for channels, layers in widths.items():
        if channels <= 0:
            raise ConfigError(f"channels must be positive, got {channels}")
        if layers < 4:
            raise ConfigError(
                f"{channels} channels are paired with {layers} cells; the network needs at "
                "least 4 cells (three reduction cells)"
            )
    if not embedding_sizes:
        raise ConfigError("the list of embedding sizes is empty")
    if len(set(embedding_sizes)) != len(embedding_sizes):
        raise ConfigError(f"embedding sizes repeat a value: {list(embedding_sizes)}")
    if any(size <= 0 for size in embedding_sizes):
        raise ConfigError(f"embedding sizes must be positive, got {list(embedding_sizes)}")


def proxy_config(
    base: RetrainConfig, epochs: int, steps_per_epoch: int | None = None
) -> RetrainConfig:
    """Shorten the schedule of `base` to `epochs` epochs for scoring a trial.

    The milestones and the warm-up shrink in proportion, and milestones that fall on epoch 0 or
    on the last epoch are dropped. `steps_per_epoch` (None: the base preset's) caps each epoch.
    Distillation is turned off, because a teacher fits only one embedding size.

    Raises:
        ConfigError: `epochs` or `steps_per_epoch` is not positive.
    """
    if epochs <= 0:
        raise ConfigError(f"proxy epochs must be positive, got {epochs}")
    if steps_per_epoch is not None and steps_per_epoch <= 0:
        raise ConfigError(f"proxy steps per epoch must be positive, got {steps_per_epoch}")
    scale = epochs / base.epochs
    milestones = sorted({round(m * scale) for m in base.milestones} & set(range(1, epochs)))
    return dataclasses.replace(
        base,
        epochs=epochs,
        milestones=milestones,
        warmup_epochs=base.warmup_epochs * scale,
        steps_per_epoch=steps_per_epoch or base.steps_per_epoch,
        eval_every_steps=None,
        kd="none",
        teacher=None,
        teacher_arch=None,
    )


def trial_config(
    base: RetrainConfig, channels: int, layers: int, embedding_size: int, genotype_text: str
) -> RetrainConfig:
    """Return `base` with a trial's width, embedding size and genotype."""
    return dataclasses.replace(
        base,
        arch="derived",
        channels=channels,
        layers=layers,
        embedding_size=embedding_size,
        genotype=genotype_text,
    )
