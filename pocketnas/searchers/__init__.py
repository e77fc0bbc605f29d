"""searchers."""
