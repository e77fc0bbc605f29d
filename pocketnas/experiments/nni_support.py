"""Detecting an NNI trial and importing NNI (an optional dependency) with a clear error."""

from __future__ import annotations

import os
import warnings
from types import ModuleType

from pocketnas.errors import PocketNasError

INSTALL_HINT = "install it with pip install 'pocketnas[nni]', or run bash scripts/setup.sh --dev"


def running_under_nni() -> bool:
    """Return True inside a trial that NNI started.

    NNI's trial runner sets NNI_PLATFORM (to "local" for the local training service); NNI itself
    treats an unset value or "unittest" as a run outside an experiment.
    """
    platform = os.environ.get("NNI_PLATFORM")
    return bool(platform) and platform != "unittest"


def filter_nni_warnings() -> None:
    """Hide NNI 3.0's import-time warnings about torch classes it does not know.

    `nni.nas.nn.pytorch` wraps every class of `torch.nn` and warns for those that are not modules
    (`torch.nn.parameter.Buffer` and others added after NNI 3.0). The wrappers are not used for
    them, so the warning is harmless.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"<class 'torch\..*'> is found to be not a nn\.Module",
        category=RuntimeWarning,
    )


def import_nni(feature: str) -> ModuleType:
    """Import and return the `nni` package.

    Raises:
        PocketNasError: NNI or one of its dependencies is not installed; the message names
            `feature` and how to install them.
    """
    filter_nni_warnings()
    try:
        import nni
        import pytorch_lightning  # noqa: F401  (NNI's one-shot strategies need it)
    except ImportError as exc:
        raise PocketNasError(
            f"{feature} needs NNI 3.0 and pytorch-lightning ({exc}); {INSTALL_HINT}"
        ) from None
    return nni
