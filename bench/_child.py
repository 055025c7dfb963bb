"""One measurement in its own process: ``python -m bench._child MODE ARGS``.

Prints one ``BENCH-CHILD-RESULT {json}`` line at exit with the timed section and the peak RSS (KiB).
The peak is the process's own ``VmHWM`` (Linux): ``ru_maxrss`` is also printed, but Linux carries it over
``execve`` from the launching process (``subprocess`` forks with ``vfork``, so it shows the *parent's* peak
whenever that is larger); ``ru_maxrss`` is used only where /proc is missing.
The target directory must not exist yet (each child writes into a fresh one).

Modes:
    cellfarm-ingest FILE LAKE_DIR GENEREF   lake.ingest_atlas(lake.Lake.open(LAKE_DIR, gene_reference=...), FILE)
    soma-from-h5ad FILE EXP_DIR             tiledbsoma.io.from_h5ad(EXP_DIR, FILE, measurement_name="RNA")
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from bench._common import CHILD_TAG


def _maxrss_kib() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def _peak_kib() -> int:
    """This process's own peak RSS (``VmHWM``), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return _maxrss_kib()


def _cellfarm_ingest(path: str, lake_dir: str, generef: str | None) -> dict[str, Any]:
    import lake

    out = lake.ingest_atlas(lake.Lake.open(lake_dir, gene_reference=generef), path)
    return {"n_obs": out.n_obs, "n_vars": out.n_vars, "status": out.status, "counts_source": out.counts_source}


def _soma_from_h5ad(path: str, exp_dir: str) -> dict[str, Any]:
    import tiledbsoma.io

    tiledbsoma.io.from_h5ad(exp_dir, path, measurement_name="RNA")
    return {}


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    mode, path, target = argv[0], argv[1], argv[2]
    # Both sides import their libraries before the clock starts; imports count in the base RSS, not the time.
    if mode == "cellfarm-ingest":
        import lake  # noqa: F401

        generef = argv[3] if len(argv) > 3 and argv[3] else None
        run: Callable[[], dict[str, Any]] = partial(_cellfarm_ingest, path, target, generef)
    elif mode == "soma-from-h5ad":
        import tiledbsoma.io  # noqa: F401

        run = partial(_soma_from_h5ad, path, target)
    else:
        print(f"unknown mode {mode!r}\n{__doc__}", file=sys.stderr)
        return 2
    base = _peak_kib()
    t0 = time.perf_counter()
    extra = run()
    section = time.perf_counter() - t0
    result = {
        "section_s": section,
        "peak_kib": _peak_kib(),
        "base_peak_kib": base,
        "ru_maxrss_kib": _maxrss_kib(),
        "extra": extra,
    }
    print(CHILD_TAG + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
