"""Bad input a user can fix, reported as a message instead of a traceback.

:class:`UserError` names the file, field or config key and says what to do.
``run_recbole_mdgr.py`` prints it as ``error: ...`` and exits with status 2; set
``RECBOLE_MDGR_TRACEBACK=1`` to see the full traceback instead. It subclasses ``ValueError``
so code that caught the ``ValueError`` these checks used to raise keeps working.

:func:`check_atomic_files` reads a dataset's atomic files once before RecBole does, and
turns what RecBole would crash on (or silently misread) into such errors.
"""

from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager

import yaml

TRACEBACK_ENV = "RECBOLE_MDGR_TRACEBACK"
FEATURE_TYPES = ("token", "token_seq", "float", "float_seq")
EXAMPLE_HEADER = "user_id:token<TAB>item_id:token<TAB>timestamp:float"


class UserError(ValueError):
    """Input the user can fix: a file, a field or a config key, and what to do about it."""


def check_choice(key: str, value, choices: tuple, default=None):
    """``value`` of config key ``key`` (``~`` = ``default``) if it is one of ``choices``;
    otherwise a UserError that names the key and lists them."""
    value = default if value is None else value
    if value not in choices:
        raise UserError(f"{key} must be one of {choices}, got {value!r}")
    return value


def check_bool(key: str, value) -> bool:
    """``value`` of config key ``key`` as a bool (``~`` = False); a UserError naming the key
    for anything but True, False or ~ (a quoted "False" would otherwise read as True)."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise UserError(f"{key} must be True or False, got {value!r}")
    return value


def check_positive_int(key: str, value, none: str | None = None) -> None:
    """Refuse ``value`` for config key ``key`` unless it is an integer >= 1 (a bool is not).
    ``none``, when given, says what ``~`` means for this key, and ``~`` is then accepted."""
    if value is None and none is not None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        also = f" or ~ ({none})" if none is not None else ""
        raise UserError(f"{key} must be a positive integer{also}, got {value!r}")


def check_int(key: str, value, low: int = 0) -> int:
    """``value`` of config key ``key`` if it is an integer >= ``low`` (a bool is not);
    otherwise a UserError naming the key (``int()`` would truncate 2.5 and raise a bare
    ValueError on a string)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{key} must be an integer >= {low}, got {value!r}")
    return value


def check_number(key: str, value, low: float = -math.inf, high: float = math.inf,
                 low_open: bool = False) -> float:
    """``value`` of config key ``key`` as a float if it is a number in ``[low, high]``
    (``(low, high]`` with ``low_open``); otherwise a UserError naming the key and the range
    (``~``, a string, a bool or NaN included)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and (low < value if low_open else low <= value) and value <= high):
        bounds = f"{'(' if low_open else '['}{low}, {high}]".replace("inf", "infinity")
        raise UserError(f"{key} must be a number in {bounds}, got {value!r}")
    return float(value)


def known_download(dataset: str) -> bool:
    """Whether RecBole knows a download address for ``dataset`` (its url.yaml)."""
    import recbole

    path = os.path.join(os.path.dirname(recbole.__file__), "properties", "dataset", "url.yaml")
    try:
        with open(path) as f:
            return dataset in (yaml.safe_load(f) or {})
    except OSError:
        return False


def check_config_files(files: list[str] | None) -> None:
    for file in files or []:
        if not os.path.isfile(file):
            raise UserError(f"config file {file} not found (--config_files takes paths "
                            "separated by spaces, relative to the current directory)")


def _fields(header: str, path: str, separator: str) -> list[tuple[str, str]]:
    out = []
    for column, cell in enumerate(header.split(separator), 1):
        name, _, ftype = cell.partition(":")
        if not name or ftype not in FEATURE_TYPES:
            raise UserError(
                f"{path}, header column {column} is {cell!r}: every header cell must be "
                f"name:type with type one of {', '.join(FEATURE_TYPES)} (e.g. {EXAMPLE_HEADER})")
        out.append((name, ftype))
    return out


def check_atomic_file(path: str, encoding: str = "utf-8", separator: str = "\t",
                      numeric: tuple[str, ...] | None = None) -> list[str]:
    """Check one atomic file; return its field names.

    Refused with the line and field named: bytes that are not ``encoding``; an empty file
    or one with a header and no rows; a header cell that is not ``name:type``; a row with
    more cells than the header; a non-numeric value in a ``float`` field (every float
    field, or only those in ``numeric``). Empty cells are allowed (RecBole fills them).
    """
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UserError(f"{path}, line {line}: bytes that are not {encoding} ({err.reason}); "
                        f"save the file as {encoding}, or set `encoding` to the file's "
                        "encoding") from None
    lines = text.split("\n")
    if not lines[0].strip():
        raise UserError(f"{path} is empty: its first line must be a header such as "
                        f"{EXAMPLE_HEADER}, then one row per line")
    fields = _fields(lines[0].rstrip("\r"), path, separator)
    floats = [i for i, (name, ftype) in enumerate(fields)
              if ftype == "float" and (numeric is None or name in numeric)]
    rows = 0
    for number, line in enumerate(lines[1:], 2):
        line = line.rstrip("\r")
        if not line:
            continue
        rows += 1
        cells = line.split(separator)
        if len(cells) > len(fields):
            raise UserError(f"{path}, line {number}: {len(cells)} cells separated by "
                            f"{separator!r} but the header has {len(fields)}; fix the row "
                            "(a tab inside a text field?)")
        for i in floats:
            if i < len(cells) and cells[i].strip():
                try:
                    float(cells[i])
                except ValueError:
                    raise UserError(
                        f"{path}, line {number}: field {fields[i][0]} (float) holds "
                        f"{cells[i]!r}, not a number; timestamps must be numbers (e.g. "
                        "Unix seconds)") from None
    if rows == 0:
        raise UserError(f"{path} has a header but no rows")
    return [name for name, _ in fields]


def check_atomic_files(config) -> None:
    """The dataset's folder and atomic files, before RecBole reads them.

    A missing folder of a dataset RecBole can download is left to RecBole's download.
    """
    name, folder = config["dataset"], config["data_path"]
    if not os.path.isdir(folder):
        if known_download(name):
            return
        raise UserError(f"dataset folder {folder} not found: put {name}.inter (RecBole "
                        "atomic files) there, or pass --data_path=<folder that holds "
                        f"{name}/>")
    encoding, separator = config["encoding"] or "utf-8", config["field_separator"] or "\t"
    suffixes = ["inter"]
    if config["benchmark_filename"]:
        suffixes = [f"{part}.inter" for part in config["benchmark_filename"]]
    for suffix in suffixes:
        path = os.path.join(folder, f"{name}.{suffix}")
        if not os.path.isfile(path):
            raise UserError(f"{path} not found: the interactions of dataset {name} go there "
                            f"(tab-separated, header e.g. {EXAMPLE_HEADER})")
        fields = check_atomic_file(path, encoding, separator)
        for key in ("USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD"):
            wanted = config[key]
            if wanted and wanted not in fields:
                raise UserError(f"{path} has no column {wanted!r} ({key}); its columns are "
                                f"{', '.join(fields)}: rename the column or set {key}")
    for suffix in ("item", "user"):
        path = os.path.join(folder, f"{name}.{suffix}")
        if os.path.isfile(path):
            check_atomic_file(path, encoding, separator)


@contextmanager
def reported_as_errors():
    """Around a command-line entry point: a :class:`UserError` becomes ``error: <message>``
    on stderr and exit status 2, unless ``RECBOLE_MDGR_TRACEBACK=1``."""
    try:
        yield
    except UserError as err:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"error: {err}\n(set {TRACEBACK_ENV}=1 to see the traceback)", file=sys.stderr)
        sys.exit(2)
