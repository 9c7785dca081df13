"""recbole-mdgr: generative recommendation with semantic IDs (MDGR, MADRec, TIGER) for RecBole."""

import importlib.util

if importlib.util.find_spec("recbole") is None:
    raise ImportError(
        "recbole-mdgr needs RecBole 1.2.1, installed without its ray pin: "
        "pip install --no-deps recbole==1.2.1 (README, 'Install')"
    )

from recbole_mdgr.compat import restore_numpy_aliases, stand_in_for_missing_ray  # noqa: E402

restore_numpy_aliases()
stand_in_for_missing_ray()

__version__ = "0.1.0"
