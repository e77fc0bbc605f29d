"""pocketnas: NAS-first AutoML for lightweight face recognition."""

from pocketnas.errors import PocketNasError

__version__ = "0.1.0"

__all__ = ["PocketNasError", "__version__"]
