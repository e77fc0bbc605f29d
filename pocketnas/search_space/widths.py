"""Widths of the retraining network that tuning explores, and the embedding sizes.

PocketNet (Boutros et al., 2021) pairs 16 initial channels with 18 cells (PocketNetS) and 32 initial
channels with 9 cells (PocketNetM). Both have channels x cells = 288, and `WIDTH_CELLS` keeps that
product for every width, so a wider network gets proportionally fewer cells. NNI's tuning
experiment and `pocketnas tune` (Optuna) both read this table, so they search the same space.
"""

from __future__ import annotations

from pocketnas.errors import ConfigError

WIDTH_CELLS: dict[int, int] = {8: 36, 16: 18, 24: 12, 32: 9}
"""Initial channels -> number of cells."""

EMBEDDING_SIZES: tuple[int, ...] = (128, 256, 512)
"""Embedding sizes of the published PocketNet models."""


def cells_for_width(channels: int) -> int:
    """Return the number of cells that `WIDTH_CELLS` pairs with `channels`.

    Raises:
        ConfigError: `channels` is not in the table; the message lists the valid widths.
    """
    try:
        return WIDTH_CELLS[channels]
    except KeyError:
        valid = ", ".join(str(width) for width in WIDTH_CELLS)
        raise ConfigError(
            f"initial channels {channels!r} are not in the width table; valid widths: {valid}"
        ) from None
