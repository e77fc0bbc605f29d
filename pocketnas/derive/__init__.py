"""Architecture weights to genotype."""

from pocketnas.derive.derive import derive_cell, derive_from_path, derive_genotype

__all__ = ["derive_cell", "derive_from_path", "derive_genotype"]
