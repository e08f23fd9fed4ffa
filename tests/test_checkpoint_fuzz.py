"""The atheris harness in CI: seeds and past findings always, a bounded fuzzing run if
atheris is installed (``pip install atheris``; skipped otherwise).

``fuzz/corpus`` holds the seeds (genuine files, ``python fuzz/make_corpus.py``),
``fuzz/regressions`` every input a fuzzing campaign found a bug with; both must go through
``fuzz/targets.one_input`` (loaded, or refused with ``CheckpointError``).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "fuzz"
sys.path.insert(0, str(FUZZ))

import targets  # noqa: E402

RUNS = 5_000


@pytest.mark.parametrize("path", sorted((FUZZ / "corpus").iterdir())
                         + sorted((FUZZ / "regressions").iterdir()), ids=lambda p: p.name)
def test_seeds_and_regressions(path):
    targets.one_input(path.read_bytes())


def test_seeds_are_genuine_files_that_load():
    for path in sorted((FUZZ / "corpus").iterdir()):
        out = targets.parse(targets.wrap(path.read_bytes()), targets.LIMITS)
        assert out, path.name


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris not installed (pip install atheris)")
def test_bounded_fuzzing_run(tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ / "corpus", corpus)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, str(FUZZ / "fuzz_checkpoint.py"), f"-runs={RUNS}", "-seed=1",
         "-max_total_time=50", "-timeout=5", "-rss_limit_mb=2048",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    found = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-",
                                                                            "timeout-", "oom-")))
    assert proc.returncode == 0 and not found, (found, proc.stderr[-4000:])
    assert "Done" in proc.stderr, proc.stderr[-2000:]
