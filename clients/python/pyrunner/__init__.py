"""pyrunner from Python: run research code on K-lines, and drive trading
scripts, on a pyrunner cluster; and, in Jupyter, the ``%%pyrunner`` cell
magic (``%load_ext pyrunner``).

    from pyrunner import Client
    r = Client().research("result = len(df)", symbol="BTCUSDT", start="2025-01-01", end="2025-01-02")
"""

from .client import (
    Client,
    Image,
    PyrunnerError,
    ResearchFailed,
    ResearchHandle,
    ResearchResult,
    Run,
    to_epoch,
    with_params,
)
from .magic import load_ipython_extension

__all__ = ["Client", "Image", "PyrunnerError", "ResearchFailed", "ResearchHandle", "ResearchResult", "Run",
           "load_ipython_extension", "to_epoch", "with_params"]
__version__ = "0.1.0"
