"""The shims for RecBole 1.2.1 on Python 3.12/3.13: numpy 2 aliases, ray optional."""

import subprocess
import sys
import types

import numpy
import pytest

from recbole_mdgr.compat import RAY_MISSING, check_versions, restore_numpy_aliases
from recbole_mdgr.errors import UserError

# run first in a fresh interpreter, so that ``name`` looks uninstalled: importing it fails
# and importlib.util.find_spec finds nothing
HIDE = """
import importlib.abc, importlib.util, sys
hidden = lambda name: name == {name!r} or name.startswith({name!r} + ".")
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if hidden(name):
            raise ModuleNotFoundError("No module named " + repr(name), name=name)
sys.meta_path.insert(0, Hide())
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if hidden(name) else _find_spec(name, *a)
"""


def run_without(package: str, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDE.format(name=package) + code],
                          capture_output=True, text=True, timeout=300)


def test_numpy_2_gets_the_aliases_recbole_reads_and_numpy_1_keeps_its_own():
    numpy2 = types.ModuleType("numpy")
    numpy2.float64, numpy2.complex128, numpy2.str_ = numpy.float64, numpy.complex128, numpy.str_
    restore_numpy_aliases(numpy2)
    assert numpy2.float_ is numpy.float64
    assert numpy2.complex_ is numpy.complex128
    assert numpy2.unicode_ is numpy.str_
    numpy1 = types.ModuleType("numpy")
    numpy1.float64, numpy1.complex128, numpy1.str_ = numpy.float64, numpy.complex128, numpy.str_
    numpy1.float_ = "numpy 1's own"
    restore_numpy_aliases(numpy1)
    assert numpy1.float_ == "numpy 1's own"
    # and RecBole's own shim then runs on whatever numpy is installed
    from recbole.config.configurator import Config

    Config.compatibility_settings(None)
    assert numpy.float is numpy.float64


def test_without_ray_recbole_quick_start_imports_and_ray_use_names_the_extra():
    done = run_without("ray", (
        "import recbole_mdgr\n"
        "from recbole.quick_start import run_recbole\n"  # RecBole's 'from ray import tune'
        "from ray import tune\n"
        "assert not hasattr(tune, 'run')\n"
        "from recbole_mdgr.compat import RayMissing, ray_available\n"
        "assert not ray_available()\n"
        "try:\n"
        "    tune.report({'recall@10': 0.1})\n"
        "except RayMissing as e:\n"
        "    print('error:', e)\n"
    ))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"error: {RAY_MISSING}"
    assert "pip install 'recbole-mdgr[tune]'" in RAY_MISSING


def test_without_recbole_the_import_error_says_how_to_install_it():
    done = run_without("recbole", "import recbole_mdgr")
    assert done.returncode == 1
    assert "pip install --no-deps recbole==1.2.1" in done.stderr


def test_pandas_3_is_refused_with_the_fix(monkeypatch):
    import pandas

    monkeypatch.setattr(pandas, "__version__", "3.0.1")
    with pytest.raises(UserError, match=r"pandas 3.0.1 .*pip install 'pandas<3'"):
        check_versions()


def test_looking_up_a_recbole_model_leaves_autograd_anomaly_detection_off():
    """RecBole 1.2.1's SINE module switches anomaly detection on for the whole process when
    imported, and RecBole's get_model imports it: every backward pass would then run under it
    (several times slower). Fresh interpreters, so that the import really happens."""
    import subprocess
    import sys

    probe = ("import torch; from {mod} import get_model; get_model('SASRec'); "
             "print(torch.is_anomaly_enabled())")
    ours = subprocess.run([sys.executable, "-c", probe.format(mod="recbole_mdgr.utils")],
                          capture_output=True, text=True, timeout=300)
    theirs = subprocess.run([sys.executable, "-c", probe.format(mod="recbole.utils")],
                            capture_output=True, text=True, timeout=300)
    assert theirs.stdout.split()[-1] == "True"  # what the lookup does without the shim
    assert ours.stdout.split()[-1] == "False", ours.stderr[-2000:]
