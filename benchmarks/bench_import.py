"""Start-up cost: ``import intervenable`` after torch, ``intervenable --help``, and pyvene's import (issue #14).

Every measurement runs in a fresh interpreter (so nothing is cached in the process), ``--repeat``
times, and the table shows medians. Inside each child the time is taken with ``perf_counter``
around the import alone, after ``import torch`` (and, for the rows that say so, transformers):

* ``import intervenable``: the package itself (public names are imported on first use);
* ``+ core API``: also resolve ``IntervenableModel``, ``IntervenableConfig``, ``VanillaIntervention``
  (what every script touches first; ``IntervenableConfig`` is a ``transformers.PretrainedConfig``, as in
  the reference, so this includes importing transformers, unless the script already did);
* ``+ every public name``: ``from intervenable import *`` after ``import torch, transformers``
  (sweeps, built-in MLP/GRU, training, ...);
* ``intervenable --help``: wall time of the whole command (``python -m intervenable.cli --help``,
  what the console script runs), interpreter start included;
* pyvene 0.1.8 ``import pyvene`` after ``import torch``, in its own venv.

Targets: ``import intervenable`` <= 0.5 s after torch, ``intervenable --help`` <= 1.5 s. Run::

    .venv/bin/python benchmarks/bench_import.py [--repeat 5] [--pyvene-python PATH]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from pyvene_venv import default_pyvene_python  # the comparison venv: $PYVENE_PYTHON or .venv-pyvene

ROOT = Path(__file__).resolve().parents[1]

TIMED = """
import time, {pre}
t0 = time.perf_counter()
{stmt}
print(time.perf_counter() - t0)
"""


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def timed_in_child(python: str, pre: str, stmt: str, repeat: int) -> Optional[float]:
    """Median seconds of ``stmt`` after ``import pre``, each in a fresh ``python``."""
    runs = []
    for _ in range(repeat):
        proc = subprocess.run([python, "-c", TIMED.format(pre=pre, stmt=stmt)], capture_output=True, text=True,
                              env=_env(), cwd=ROOT)
        if proc.returncode != 0:
            return None
        runs.append(float(proc.stdout.strip().splitlines()[-1]))
    return statistics.median(runs)


def wall(cmd: List[str], repeat: int) -> float:
    """Median wall seconds of a whole command."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, env=_env(), cwd=ROOT, check=True)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--pyvene-python", default=default_pyvene_python(),
                    help="pyvene 0.1.8's interpreter (default: $PYVENE_PYTHON or .venv-pyvene; see pyvene_venv.py)")
    args = ap.parse_args()
    py, n = sys.executable, args.repeat

    torch_s = timed_in_child(py, "sys", "import torch", n)
    ours = timed_in_child(py, "torch", "import intervenable", n)
    core = timed_in_child(py, "torch", "import intervenable as pv; pv.IntervenableModel; pv.IntervenableConfig; "
                                       "pv.VanillaIntervention", n)
    core_tf = timed_in_child(py, "torch, transformers", "import intervenable as pv; pv.IntervenableModel; "
                                                        "pv.IntervenableConfig; pv.VanillaIntervention", n)
    full = timed_in_child(py, "torch, transformers", "from intervenable import *", n)
    transformers_s = timed_in_child(py, "torch", "import transformers", n)
    help_s = wall([py, "-m", "intervenable.cli", "--help"], n)
    pyvene = (timed_in_child(args.pyvene_python, "torch", "import pyvene", n)
              if args.pyvene_python and os.path.exists(args.pyvene_python) else None)

    def cell(x: Optional[float]) -> str:
        return "not installed" if x is None else f"{x:.3f}"

    def ratio(x: Optional[float]) -> str:
        return "-" if x is None or pyvene is None or x <= 0 else f"{pyvene / x:.0f}x"

    print(f"load average {os.getloadavg()[0]:.2f}, median of {n} fresh interpreters; import torch alone: "
          f"{cell(torch_s)} s; import transformers after torch: {cell(transformers_s)} s\n")
    print("| measurement | seconds | target | pyvene import / this |")
    print("|---|---:|---:|---:|")
    print(f"| `import intervenable` after `import torch` | {cell(ours)} | <= 0.5 | {ratio(ours)} |")
    print(f"| ... + core API (IntervenableModel, IntervenableConfig, VanillaIntervention) | {cell(core)} | <= 0.5 | "
          f"{ratio(core)} |")
    print(f"| ... the same core API after `import torch, transformers` | {cell(core_tf)} | - | {ratio(core_tf)} |")
    print(f"| `from intervenable import *` after `import torch, transformers` | {cell(full)} | - | {ratio(full)} |")
    print(f"| `intervenable --help` (whole command, interpreter start included) | {help_s:.3f} | <= 1.5 | "
          f"{ratio(help_s)} |")
    print(f"| pyvene 0.1.8 `import pyvene` after `import torch` | {cell(pyvene)} | - | 1x |")


if __name__ == "__main__":
    main()
