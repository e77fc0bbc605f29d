"""search_space."""
