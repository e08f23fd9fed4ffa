"""Coverage-guided fuzzing of adabin_np.checkpoint with atheris (libFuzzer for Python).

    python fuzz/fuzz_checkpoint.py fuzz/corpus -max_total_time=600      # a campaign
    python fuzz/fuzz_checkpoint.py -runs=3000 -seed=1 COPY_OF_CORPUS     # what CI runs

Only the modules of ``adabin_np.checkpoint`` are instrumented. A finding is any exception
other than ``CheckpointError`` (see ``fuzz/targets.py``), a crash, a per-input timeout
(``-timeout``, default here 10 s) or memory over ``-rss_limit_mb``. Give it a copy of the
corpus: libFuzzer adds the inputs it finds to the first directory.
"""
from __future__ import annotations

import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy  # noqa: E402,F401  (heavy dependencies first, uninstrumented)

with atheris.instrument_imports(include=["adabin_np.checkpoint"]):
    import adabin_np.checkpoint  # noqa: E402,F401

import targets  # noqa: E402


def main() -> None:
    args = list(sys.argv)
    if not any(a.startswith("-timeout=") for a in args):
        args.append("-timeout=10")
    if not any(a.startswith("-rss_limit_mb=") for a in args):
        args.append("-rss_limit_mb=3072")
    atheris.Setup(args, targets.one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
