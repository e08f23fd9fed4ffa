"""The ``adabin-np`` command line (issue 13): train never writes into the package, every user
error is one line on stderr with a non-zero exit (tracebacks only with ``--debug``), the
architecture is detected from checkpoint keys, every option has help, ``--version``,
``summary`` and ``warmup``; plus the per-layer report of ``analyze``."""

import hashlib
import json

import numpy as np
import pytest

import adabin_np as ab
from adabin_np import cli, data, models, train


@pytest.fixture
def small_split(monkeypatch):
    full = data.load_digits_split()
    small = data.DigitsSplit(full.x_train[:64], full.y_train[:64], full.x_test[:40],
                             full.y_test[:40])
    monkeypatch.setattr(data, "load_digits_split", lambda **kw: small)
    return small


def _run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# train: output outside the package, then analyze --model
# ----------------------------------------------------------------------------------------------


def test_train_writes_to_cwd_never_the_package_then_analyze_model(tmp_path, monkeypatch,
                                                                  small_split, capsys):
    monkeypatch.chdir(tmp_path)
    before = _sha(models.DIGITS_WEIGHTS)
    rc, out, err = _run(capsys, "train", "--epochs", "1", "--no-progress", "--convention",
                        "official", "--seed", "5")
    assert rc == 0, err
    written = tmp_path / cli.TRAIN_DEFAULT_OUT.name
    assert written.is_file()
    assert _sha(models.DIGITS_WEIGHTS) == before  # the embedded model is untouched
    assert "current directory" in out and "test accuracy" in out
    assert "adabin-np analyze --model" in out
    m = models.load_digits_model(written)
    assert m.convention == "official" and m.meta["epochs"] == 1 and m.meta["seed"] == 5
    acc = train.evaluate(m, small_split.x_test, small_split.y_test)
    assert abs(acc - m.meta["accuracy"]) < 1e-12

    rc, out, err = _run(capsys, "analyze", "--model", str(written), "--no-progress")
    assert rc == 0, err
    assert "official convention" in out and written.name in out
    for name, _ in m.binary_layers():
        assert name in out
    assert "accuracy (float path)" in out and "flip risk" in out
    assert "accuracy (packed path)" in out and "predictions agree" in out
    # the accuracy printed is the model's, on the (monkeypatched) split
    assert f"{100 * acc:.2f}% on 40 images" in out


def test_train_refuses_a_path_inside_the_package(capsys, tmp_path):
    before = _sha(models.DIGITS_WEIGHTS)
    rc, out, err = _run(capsys, "train", "--out", str(models.DIGITS_WEIGHTS), "--epochs", "1")
    assert rc == 2 and "inside the installed package" in err
    assert _sha(models.DIGITS_WEIGHTS) == before
    rc, _, err = _run(capsys, "train", "--out", str(tmp_path))  # a folder
    assert rc == 2 and "is a directory" in err


# ----------------------------------------------------------------------------------------------
# user errors: one line, non-zero exit, no traceback
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    r20 = tmp_path / "r20.npz"
    ab.save_npz(r20, models.resnet20_1w1a().state_dict())
    junk = tmp_path / "junk.npz"
    ab.save_npz(junk, {"a.weight": np.ones(3), "b.bias": np.zeros(2)})
    digits = tmp_path / "digits.npz"
    train.save_model(digits, models.digits_cnn(), convention="paper")
    npy = tmp_path / "bad.npy"
    np.save(npy, np.ones((2, 5)))
    return dict(text=text, r20=r20, junk=junk, digits=digits, npy=npy, dir=tmp_path,
                missing=tmp_path / "missing.th")


USER_ERRORS = [
    (["analyze", "{text}"], ["notes.txt", ".npz"]),
    (["analyze", "{missing}"], ["missing.th", "no such file"]),
    (["analyze", "{dir}"], ["is a directory"]),
    (["analyze", "{r20}", "--arch", "resnet18"], ["resnet20", "use --arch resnet20"]),
    (["analyze", "{r20}", "--arch", "digits"], ["use --arch resnet20"]),
    (["analyze", "{junk}"], ["match none of"]),
    (["analyze", "{digits}", "--model", "{digits}"], ["not both"]),
    (["analyze", "--arch", "resnet20"], ["needs a CHECKPOINT"]),
    (["analyze", "--n-images", "0"], ["--n-images", ">= 1"]),
    (["analyze", "--batch-size", "0"], ["--batch-size", ">= 1"]),
    (["analyze", "--flip-tol", "nan"], ["--flip-tol"]),
    (["analyze", "--inputs", "{npy}"], ["--inputs", "bad.npy"]),
    (["analyze", "--inputs", "{missing}"], ["--inputs", "missing.th"]),
    (["analyze", "--layer", "layer1.0.conv1"], ["need --out"]),
    (["analyze", "--out", "{dir}/figs", "--layer", "nope"], ["--layer 'nope'", "layer1.0.conv1"]),
    (["analyze", "--out", "{dir}/figs", "--channel", "16"], ["--channel 16", "0..15"]),
    (["analyze", "--out", "{text}"], ["is a file"]),
    (["analyze", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["train", "--epochs", "0"], ["--epochs", ">= 1"]),
    (["train", "--lr", "-0.1"], ["--lr", "> 0"]),
    (["train", "--batch-size", "1"], ["--batch-size", ">= 2"]),
    (["summary", "{text}"], ["notes.txt"]),
    (["summary", "--input-size", "0", "8"], ["--input-size"]),
]


@pytest.mark.parametrize("argv, needles", USER_ERRORS,
                         ids=[" ".join(a).replace("{", "").replace("}", "") for a, _ in USER_ERRORS])
def test_user_errors_are_one_line(argv, needles, files, capsys):
    argv = [a.format(**files) for a in argv]
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse errors exit through our one-line parser
        rc = exc.code
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"adabin-np {argv[0]}: error: "), err
    assert "Traceback" not in err + out
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_device_cuda_without_gpu_is_a_user_error(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_cuda_available", lambda: False)
    rc, _, err = _run(capsys, "analyze", "--device", "cuda")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "--device cpu" in err


def test_debug_shows_the_traceback(files, capsys):
    with pytest.raises(cli.UsageError, match="notes.txt"):
        cli.main(["analyze", str(files["text"]), "--debug"])
    with pytest.raises(cli.UsageError):
        cli.main(["--debug", "analyze", str(files["text"])])


def test_internal_errors_are_one_line_with_exit_1(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("kernel exploded\nsecond line")

    monkeypatch.setattr(cli, "_cmd_warmup", boom)
    rc, _, err = _run(capsys, "warmup")
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "internal error" in err and "RuntimeError: kernel exploded" in err and "--debug" in err
    with pytest.raises(RuntimeError):
        cli.main(["warmup", "--debug"])


# ----------------------------------------------------------------------------------------------
# architecture detection
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, build", [("resnet20", models.resnet20_1w1a),
                                         ("resnet18", models.resnet18_1w1a),
                                         ("digits", models.digits_cnn)])
def test_detect_arch_exact(arch, build):
    sd = build().state_dict()
    assert cli.detect_arch(sd) == (arch, True)
    # a partly broken dict is still recognised, but not exactly
    sd.pop(next(iter(sd)))
    assert cli.detect_arch(sd) == (arch, False)


def test_detect_arch_none_and_digits_vs_resnet20():
    assert cli.detect_arch({"x": np.ones(2)}) == (None, False)
    # digits and resnet20 share key names at the start; the shapes tell them apart
    d = models.digits_cnn().state_dict()
    r = models.resnet20_1w1a().state_dict()
    assert d["conv1.weight"].shape != r["conv1.weight"].shape
    assert cli.detect_arch(d)[0] == "digits" and cli.detect_arch(r)[0] == "resnet20"


def test_release_checkpoint_is_detected():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / \
        "adabin_resnet20_1w1a_cifar10.th"
    if not path.exists():
        pytest.skip("release checkpoint not available")
    state, _ = models.split_metadata(ab.load_checkpoint(path))
    assert cli.detect_arch(state) == ("resnet20", True)


def test_analyze_checkpoint_without_arch_detects_it(files, capsys):
    rc, out, err = _run(capsys, "analyze", str(files["digits"]), "--no-progress", "--no-packed",
                        "--n-images", "8")
    assert rc == 0, err
    assert "digits (detected from its keys) from digits.npz" in out
    assert "8 images" in out and "packed path skipped" in out


# ----------------------------------------------------------------------------------------------
# help, version, labels, timing
# ----------------------------------------------------------------------------------------------


def test_every_option_has_help():
    import argparse

    parser = cli.build_parser()
    missing = []
    for name, sub in [("", parser), *parser.subcommands.items()]:
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"adabin-np {ab.__version__} ")


def test_digits_model_names_itself():
    m = models.digits_cnn()
    assert type(m).__name__ == "DigitsCNN" and repr(m).startswith("DigitsCNN(")
    assert type(models.load_digits_model()).__name__ == "DigitsCNN"


def test_analyze_out_times_include_figures_and_title_has_no_path(tmp_path, capsys):
    out_dir = tmp_path / "figs"
    rc, out, err = _run(capsys, "analyze", "--no-progress", "--n-images", "12", "--no-packed",
                        "--out", str(out_dir), "--layer", "layer2.0.conv2", "--channel", "3")
    assert rc == 0, err
    assert "distributions and figures" in out and "total" in out
    summary = json.loads((out_dir / "summary.json").read_text())
    assert "/" not in summary["name"] and "digits" in summary["name"]
    assert summary["model"] == "DigitsCNN"
    assert (out_dir / "landscape.png").is_file() and (out_dir / "summary.png").is_file()


def test_progress_bar_labels_are_distinct(monkeypatch, small_split):
    import tqdm.auto

    seen = []
    real = tqdm.auto.tqdm

    def spy(*args, **kwargs):
        seen.append(kwargs.get("desc"))
        kwargs["disable"] = True
        return real(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", spy)
    m = models.digits_cnn().eval()
    cli.layer_report(m, small_split.x_test[:4], packed=True, progress=True)
    assert seen and all(d and d != "analyze" for d in seen)


# ----------------------------------------------------------------------------------------------
# summary and warmup commands
# ----------------------------------------------------------------------------------------------


def test_summary_command(files, capsys):
    rc, out, err = _run(capsys, "summary")
    assert rc == 0, err
    assert "DigitsCNN summary, input (1, 8, 8)" in out and "compression ratio" in out
    rc, out, err = _run(capsys, "summary", str(files["r20"]))
    assert rc == 0, err
    assert "resnet20 (detected from its keys)" in out
    assert "267264 binary" in out  # ResNet-20's 1-bit weights (see tests/test_summary.py)
    rc, out, err = _run(capsys, "summary", str(files["r20"]), "--input-size", "16", "16")
    assert rc == 0, err
    assert "input (3, 16, 16)" in out


def test_warmup_caches_the_kernels(capsys):
    import subprocess
    import sys
    from pathlib import Path

    rc, out, err = _run(capsys, "warmup")
    assert rc == 0, err
    assert out.startswith("Numba kernels: ")
    # after a warmup process, a fresh process finds every kernel in Numba's on-disk cache (two
    # processes: this one's kernels may predate an edit of their source in a working tree)
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "adabin_np", "warmup"],
                              capture_output=True, text=True, timeout=600,
                              cwd=Path(__file__).resolve().parents[1])
        assert proc.returncode == 0, proc.stderr
    assert "nothing to compile" in proc.stdout, proc.stdout


def test_compile_note_is_said_once(capsys):
    import numba

    @numba.njit(cache=False)
    def plus_one(x):
        return x + 1

    plus_one.py_func.__module__ = "adabin_np.fake_kernels"  # counted like a package kernel

    with cli._CompileWatch(announce=True) as watch:
        plus_one(1)
        plus_one(1.5)
    assert watch.count >= 2
    assert capsys.readouterr().err.count("one-time") == 1
    with cli._CompileWatch(announce=True) as watch:
        plus_one(2)  # already compiled: no event, no note
    assert watch.count == 0 and "one-time" not in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# analyze's per-layer report and bench delegation
# ----------------------------------------------------------------------------------------------


def test_layer_report_fields(small_split):
    m = models.digits_cnn().eval()
    rows, lf, lp = cli.layer_report(m, small_split.x_test, batch_size=16, packed=True)
    assert [r["name"] for r in rows] == [n for n, _ in m.binary_layers()]
    assert lf.shape == (40, 10)
    for r in rows:
        assert 0.0 <= r["flip_risk"] <= 1.0 and 0.0 <= r["upper"] <= 1.0
        assert r["packed_maxdiff"] < 1e-12


def test_cli_bench_is_delegated(monkeypatch, capsys):
    import sys
    import types

    calls = {}
    fake = types.ModuleType("adabin_np.bench")
    fake.add_arguments = lambda p: p.add_argument("--size", type=int, default=1)
    fake.run = lambda args: calls.setdefault("size", args.size) and 0
    monkeypatch.setitem(sys.modules, "adabin_np.bench", fake)
    monkeypatch.setattr(ab, "bench", fake, raising=False)
    assert cli.main(["bench", "--size", "7"]) == 0
    assert calls == {"size": 7}
