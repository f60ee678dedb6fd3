"""Tests for ``jiio train`` (orchestrator.commands.train, through orchestrator.cli.main and the
``jiio`` console script): the checkpoint it writes and that ``jiio bench --checkpoint``
takes, one-line errors for bad input, ``--resume`` refusing changed settings, and a run
killed with SIGKILL and resumed, as a user would hit it.

Every run is tiny (digits, the tiny MDEQ, two steps per epoch, one evaluation batch, two
PGD steps, four JIIO iterations): the numbers mean nothing, the files and exit codes do.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from orchestrator import cli

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "train",
    "--task",
    "adversarial",
    "--mode",
    "clean",
    "--epochs",
    "1",
    "--max-steps-per-epoch",
    "2",
    "--set",
    "eval_batches=1",
    "--set",
    "pgd_steps=2",
    "--set",
    "max_iter=4",
    "--threads",
    "1",
    "--quiet",
]
# The kill test's run: three epochs of two steps, so a resumed run ends at epoch 3, step 6.
KILLED = [
    "train",
    "--task",
    "adversarial",
    "--mode",
    "clean",
    "--epochs",
    "3",
    "--max-steps-per-epoch",
    "2",
    "--set",
    "eval_batches=1",
    "--set",
    "pgd_steps=2",
    "--set",
    "max_iter=4",
    "--set",
    "batch_size=32",
    "--threads",
    "1",
    "--quiet",
]


@contextlib.contextmanager
def _torch_threads():
    """``--threads`` sets torch's thread count in this process: put it back afterwards."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with _torch_threads(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def _jiio() -> list[str]:
    script = Path(sys.executable).with_name("jiio")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "orchestrator.cli"]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def _assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    assert lines[0].startswith("jiio train: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """One tiny run's checkpoint (shared: tests copy it before changing anything) and the
    JSON line it printed."""
    path = tmp_path_factory.mktemp("train") / "x.pt"
    rc, out, err = _main([*TINY, "--out", str(path)])
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1, lines
    return path, json.loads(lines[0])


@pytest.fixture
def checkpoint(trained, tmp_path) -> Path:
    """A private copy of the tiny checkpoint."""
    path = tmp_path / "x.pt"
    shutil.copyfile(trained[0], path)
    return path


# --- (a) the checkpoint -----------------------------------------------------------------------


def test_tiny_run_writes_a_weights_only_checkpoint(trained):
    path, summary = trained
    assert summary["status"] == "completed"
    assert summary["steps"] == 2
    assert summary["checkpoint"] == str(path)
    assert 0.0 <= summary["clean_acc"] <= 1.0
    assert _leftovers(path.parent) == []
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(state["modules"]) == {"cell", "head"}
    for module in state["modules"].values():
        assert module and all(isinstance(t, torch.Tensor) for t in module.values())
    assert state["epoch"] == 1 and state["global_step"] == 2
    config = state["config"]
    assert config["task"] == "adversarial" and config["mode"] == "clean"
    assert config["epochs"] == 1 and config["max_steps_per_epoch"] == 2
    assert config["eval_batches"] == 1 and config["pgd_steps"] == 2 and config["max_iter"] == 4
    assert config["model_size"] == "tiny" and config["seed"] == 0 and config["device"] == "cpu"
    assert {"optimizer", "scheduler", "last_metrics"} <= set(state)


def test_bench_attack_accepts_the_checkpoint(trained):
    path, _ = trained
    rc, out, err = _main(
        [
            "bench",
            "attack",
            "--checkpoint",
            str(path),
            "--batch",
            "8",
            "--samples",
            "16",
            "--reps",
            "1",
            "--pgd-steps",
            "2",
            "--jiio-iters",
            "4",
            "--quiet",
            "--plot",
            "",
            "--json",
        ]
    )
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1, "--json prints exactly one line"
    report = json.loads(lines[0])
    assert report["bench"] == "attack"
    assert report["config"]["checkpoint"] == str(path)
    assert report["model"]["source"] == "checkpoint"
    assert report["model"]["config"]["mode"] == "clean"


def test_resume_of_a_finished_run_changes_nothing_and_exits_0(checkpoint):
    before = torch.load(checkpoint, weights_only=True)
    rc, out, err = _main([*TINY, "--out", str(checkpoint), "--resume"])
    assert rc == 0, err
    assert json.loads(out)["steps"] == 2
    after = torch.load(checkpoint, weights_only=True)
    assert (after["epoch"], after["global_step"]) == (1, 2)
    for name, module in before["modules"].items():
        for key, tensor in module.items():
            assert torch.equal(tensor, after["modules"][name][key]), (name, key)
    assert _leftovers(checkpoint.parent) == []


# --- (b) bad input: exit 2, one line, no traceback ---------------------------------------------


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--set", "foo=1"], ["unknown hyperparameters", "foo"]),
        (["--set", "pgd_steps"], ["NAME=VALUE", "pgd_steps"]),
        (["--set", "=3"], ["NAME=VALUE"]),
        (["--epochs", "0"], ["--epochs", ">= 1"]),
        (["--set", "pgd_steps=0"], ["pgd_steps"]),
        (["--set", "lr=fast"], ["lr"]),
        (["--task", "generative", "--mode", "pgd"], ["mode", "generative"]),
    ],
    ids=["unknown-field", "no-equals", "no-name", "epochs-0", "pgd-steps-0", "lr-string", "generative-pgd"],
)
def test_bad_settings_exit_2_with_one_line(extra, needles, tmp_path):
    out = tmp_path / "x.pt"
    rc, stdout, err = _main([*TINY, *extra, "--out", str(out)])
    _assert_one_line_error(rc, err, *needles)
    assert stdout == ""
    assert not out.exists()


def test_existing_out_without_resume_is_refused_and_kept(checkpoint):
    data = checkpoint.read_bytes()
    rc, _, err = _main([*TINY, "--out", str(checkpoint)])
    _assert_one_line_error(rc, err, "exists", "--resume")
    assert checkpoint.read_bytes() == data


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    out = tmp_path / "missing.pt"
    rc, _, err = _main([*TINY, "--out", str(out), "--resume"])
    _assert_one_line_error(rc, err, "--resume", "no checkpoint", str(out))
    assert not out.exists()


def test_out_in_a_missing_directory_is_created(tmp_path):
    out = tmp_path / "models" / "deeper" / "x.pt"  # models/ does not exist on a fresh checkout
    rc, _, err = _main([*TINY, "--out", str(out)])
    assert rc == 0, err
    assert out.is_file()


def test_out_where_no_directory_can_be_made_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    rc, _, err = _main([*TINY, "--out", str(blocker / "x.pt")])
    _assert_one_line_error(rc, err, "cannot create directory", str(blocker))


def test_console_script_prints_one_line_and_no_traceback(tmp_path):
    """The same through the installed ``jiio`` script, as a user runs it."""
    proc = subprocess.run(
        [*_jiio(), *TINY, "--set", "foo=1", "--out", str(tmp_path / "x.pt")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    _assert_one_line_error(proc.returncode, proc.stderr, "foo")
    assert proc.stdout == ""


# --- (c) --resume refuses changed settings -------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "name", "old", "new"),
    [
        (["--set", "lr=0.01"], "lr", "0.002", "0.01"),
        (["--set", "alpha_x=0.3"], "alpha_x", "0.6", "0.3"),
        (["--seed", "1"], "seed", "0", "1"),
        (["--mode", "pgd"], "mode", "'clean'", "'pgd'"),
    ],
    ids=["lr", "jiio-field", "seed", "mode"],
)
def test_resume_with_a_changed_setting_is_refused_naming_it(checkpoint, extra, name, old, new):
    data = checkpoint.read_bytes()
    rc, _, err = _main([*TINY, *extra, "--out", str(checkpoint), "--resume"])
    _assert_one_line_error(rc, err, "changed settings", f"{name}: {old} -> {new}")
    assert checkpoint.read_bytes() == data, "a refused resume must leave the checkpoint alone"


def test_resume_names_every_changed_setting(checkpoint):
    rc, _, err = _main(
        [*TINY, "--set", "lr=0.01", "--set", "pgd_steps=3", "--out", str(checkpoint), "--resume"]
    )
    _assert_one_line_error(rc, err, "lr: 0.002 -> 0.01", "pgd_steps: 2 -> 3")


def _not_a_checkpoint(kind: str, path: Path) -> None:
    if kind == "garbage":
        path.write_bytes(b"not a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        torch.save({"config": {}}, path)


@pytest.mark.parametrize("kind", ["garbage", "empty", "tensor", "dict-without-modules"])
def test_resume_from_a_file_that_is_not_a_checkpoint_exits_2(kind, tmp_path):
    path = tmp_path / "x.pt"
    _not_a_checkpoint(kind, path)
    try:
        rc, _, err = _main([*TINY, "--out", str(path), "--resume"])
    except Exception as exc:  # what the user sees as a traceback
        pytest.fail(f"traceback: {type(exc).__name__}: {exc}")
    _assert_one_line_error(rc, err, str(path))


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory) -> Path:
    """A ``--data-root`` holding a few random images in MNIST's four idx files."""
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 120), ("t10k", 80)):
        images = torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=gen, dtype=torch.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + images.numpy().tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + labels.numpy().tobytes()
        )
    return root


def test_resume_on_another_dataset_is_refused(checkpoint, fake_mnist):
    rc, _, err = _main(
        [*TINY, "--dataset", "mnist", "--data-root", str(fake_mnist), "--out", str(checkpoint), "--resume"]
    )
    _assert_one_line_error(rc, err, "dataset")


def test_bench_refuses_a_checkpoint_of_another_dataset(trained, fake_mnist):
    path, _ = trained
    other = ["--dataset", "mnist", "--data-root", str(fake_mnist)]
    small = ["--batch", "8", "--samples", "8", "--reps", "1", "--pgd-steps", "1", "--jiio-iters", "2"]
    rc, _, err = _main(
        ["bench", "attack", "--checkpoint", str(path), *other, *small, "--quiet", "--plot", "", "--json"]
    )
    assert rc == 2 and "trained on 'digits'" in err, err


# --- (d) SIGKILL, then --resume ----------------------------------------------------------------


def _start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*_jiio(), *KILLED, *extra, "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_when(proc: subprocess.Popen, ready, deadline_s: float = 120.0) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (polled); False when it ended first."""
    t0 = time.monotonic()
    while proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            return True
        if time.monotonic() - t0 > deadline_s:
            proc.kill()
            proc.communicate(timeout=60)
            pytest.fail("the training run did not reach the kill point in time")
    proc.communicate(timeout=60)
    return False


def _finish(out: Path, resume: bool, note: str) -> None:
    """Run to the end (``--resume`` or afresh) and check the final checkpoint and folder."""
    proc = _start(out, *(["--resume"] if resume else []))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{note}: {stderr}"
    assert json.loads(stdout)["status"] == "completed"
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert (state["epoch"], state["global_step"]) == (3, 6), note
    assert state["config"]["epochs"] == 3


def test_killed_right_after_the_first_checkpoint_resumes_to_the_end(tmp_path):
    out = tmp_path / "k.pt"
    proc = _start(out)
    assert _kill_when(proc, out.exists), "the run ended before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(out, map_location="cpu", weights_only=True)  # whole, not torn
    assert 1 <= state["epoch"] < 3 and state["global_step"] == 2 * state["epoch"]
    _finish(out, resume=True, note="resume after the first checkpoint")
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
def test_killed_at_a_random_moment_resumes_to_the_end(tmp_path):
    seed = random.SystemRandom().randrange(2**32)
    delay = random.Random(seed).uniform(0.0, 9.0)
    note = f"killed {delay:.2f}s after the start (seed {seed})"
    out = tmp_path / "k.pt"
    proc = _start(out)
    t0 = time.monotonic()
    _kill_when(proc, lambda: time.monotonic() - t0 >= delay)
    killed_pid = proc.pid
    if out.exists():
        _finish(out, resume=True, note=note)
    else:  # killed before the first checkpoint: --resume says so, a fresh run starts over
        proc = _start(out, "--resume")
        _, stderr = proc.communicate(timeout=300)
        _assert_one_line_error(proc.returncode, stderr, "no checkpoint")
        _finish(out, resume=False, note=note)
    assert _leftovers(tmp_path) == [], f"{note} (pid {killed_pid})"


@pytest.mark.slow
def test_killed_while_writing_a_checkpoint_resumes_and_leaves_no_temporary(tmp_path):
    """SIGKILL while ``<out>.tmp-<pid>`` is being written (after a first checkpoint exists).
    The resumed run completes and removes the killed run's temporary file."""
    out = tmp_path / "k.pt"
    proc = _start(out)
    if not _kill_when(proc, lambda: out.exists() and bool(_leftovers(tmp_path))):
        pytest.skip("the run ended before a checkpoint write could be caught")
    killed_pid = proc.pid
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert 1 <= state["epoch"] < 3
    _finish(out, resume=True, note="resume after a kill inside a checkpoint write")
    assert _leftovers(tmp_path) == [], f"the killed run's k.pt.tmp-{killed_pid} is left"


# --- object storage (an S3 server on loopback: tests/orchestrator/conftest.py) -------------------


def test_train_resume_and_bench_on_object_storage(s3_bucket, capsys):
    """--out s3://...: the checkpoint is one PUT per epoch; --resume reads it back from the
    bucket (and refuses a change); bench --checkpoint s3://... takes it; nothing local."""
    import pyarrow.fs as pafs

    out = f"{s3_bucket}/models/adv.pt"
    two = [a if a != "1" or TINY[i - 1] != "--epochs" else "2" for i, a in enumerate(TINY)]
    assert cli.main([*TINY, "--out", out]) == 0
    fs, key = pafs.FileSystem.from_uri(out)
    assert fs.get_file_info(key).type == pafs.FileType.File
    capsys.readouterr()
    rc = cli.main([*TINY, "--out", out])  # exists, no --resume
    assert rc == 2 and "exists" in capsys.readouterr().err
    rc = cli.main([*two, "--out", out, "--resume"])  # epochs changed: refused, named
    assert rc == 2 and "epochs: 1 -> 2" in capsys.readouterr().err
    assert cli.main([*TINY, "--out", out, "--resume"]) == 0  # finished: nothing left to do
    capsys.readouterr()
    bench = ["bench", "attack", "--checkpoint", out, "--batch", "8", "--samples", "8", "--reps", "1"]
    small = ["--pgd-steps", "1", "--jiio-iters", "2", "--quiet", "--plot", "", "--json"]
    assert cli.main([*bench, *small]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"]["source"] == "checkpoint" and result["model"]["path"] == out
    rc = cli.main(["bench", "attack", "--checkpoint", f"{s3_bucket}/models/missing.pt"])
    assert rc == 2 and "checkpoint not found" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_on_object_storage_after_the_first_checkpoint_resumes_to_the_end(s3_bucket):
    """The kill test above with --out s3://... (the subprocess inherits the S3 endpoint)."""
    from orchestrator.storage import file_exists, load_bytes

    out = f"{s3_bucket}/k.pt"

    def state() -> dict:
        return torch.load(io.BytesIO(load_bytes(out)), map_location="cpu", weights_only=True)

    proc = _start(out)
    assert _kill_when(proc, lambda: file_exists(out)), "the run ended before it could be killed"
    assert 1 <= state()["epoch"] < 3  # one whole PUT, never a torn object
    proc = _start(out, "--resume")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert (state()["epoch"], state()["global_step"]) == (3, 6)
