"""``jiio train``: train one model with a task's Trainer and save its checkpoint.

The checkpoint (``Trainer.state_dict()`` saved with ``torch.save``) is what ``jiio bench
--checkpoint`` and ``sweeps/solver.py --checkpoint`` take: for instance the adversarially
trained classifiers of the paper's Table 2 (``--mode pgd``: PGD in the loop; ``--mode
jiio``: JIIO in the loop) and the decoders trained with JIIO in the loop (Fig. 3)::

    jiio train --task adversarial --mode pgd --epochs 8 --out models/adv-pgd.pt
    jiio train --task adversarial --mode jiio --epochs 8 --out models/adv-jiio.pt
    jiio train --task generative --mode jiio --epochs 8 --out models/gen-jiio.pt

JIIO's settings are the paper code's for the task (as in the sweeps), any TaskConfig or
JIIOConfig field can be set with ``--set NAME=VALUE``. ``--mode pgd`` runs the paper's PGD
(every step a full forward solve and implicit backward); ``--set pgd_warm=true`` makes it the
strong PGD (forward warm-started from the previous step's z*, at most
``pgd_warm_backward_iters`` = 4 warm backward iterations, 0: Jacobian-free)::

    jiio train --task adversarial --mode pgd --set pgd_warm=true --epochs 8 --out models/adv-pgdw.pt

The checkpoint is written at the end of every epoch (to a temporary file, fsync'ed, then
renamed over ``--out``): a crash or Ctrl-C loses at most the epoch in progress, and
``--resume`` continues from the last one with the same settings (a changed setting is refused, naming it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from orchestrator.data import DATASETS

    p.add_argument(
        "--task", choices=("adversarial", "generative", "inpainting", "denoising"), default="adversarial"
    )
    p.add_argument(
        "--mode", default=None, help="adversarial: clean|pgd|jiio (default jiio); others: jiio|adam"
    )
    p.add_argument("--dataset", choices=DATASETS, default="digits", help="default: digits (no files needed)")
    p.add_argument("--data-root", default=None, help="directory holding the dataset (all but digits)")
    p.add_argument("--download", action="store_true", help="download the dataset into --data-root if missing")
    p.add_argument("--size", choices=("tiny", "paper"), default="tiny", help="MDEQ size (default tiny)")
    p.add_argument("--epochs", type=int, default=4, help="epochs (default 4)")
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap on steps per epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any TaskConfig / JIIOConfig field, e.g. --set pgd_steps=10 --set alpha_x=0.3 (repeatable)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="checkpoint path (.pt) or s3:// / gs:// URI, written after every epoch",
    )
    p.add_argument("--resume", action="store_true", help="continue the training saved in --out")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string: --set init=zero


def _config(args: argparse.Namespace) -> Any:
    from orchestrator.tasks import TaskConfig
    from orchestrator.tasks.jiio_settings import paper_jiio

    if args.epochs < 1:
        raise ValueError(f"--epochs must be an integer >= 1, got {args.epochs}")
    flat: dict[str, Any] = paper_jiio(args.task, args.dataset).to_dict()
    flat.update(
        task=args.task,
        mode=args.mode or "jiio",
        model_size=args.size,
        epochs=args.epochs,
        max_steps_per_epoch=args.max_steps_per_epoch,
        seed=args.seed,
        device=args.device,
    )
    for item in args.set:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE, e.g. --set pgd_steps=10")
        flat[name.strip()] = _value(text.strip())
    return TaskConfig.from_flat(flat)


def _read_checkpoint(path: str) -> dict[str, Any]:
    from orchestrator.storage import read_checkpoint

    try:
        state = read_checkpoint(path)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"--resume: {err}") from None
    if not isinstance(state, dict) or not isinstance(state.get("modules"), dict) or "config" not in state:
        raise ValueError(f"--resume: {path} is not a jiio train checkpoint (no 'modules' and 'config')")
    return state


def _progress(quiet: bool, total: int) -> Any:
    t0 = time.perf_counter()

    def report(row: dict[str, Any]) -> None:
        if quiet:
            return
        el = time.perf_counter() - t0
        if row.get("phase") == "eval":
            shown = {k: v for k, v in row.items() if isinstance(v, float) and not k.endswith("_s")}
            text = ", ".join(f"{k} {v:.4g}" for k, v in sorted(shown.items()))
            print(
                f"[jiio train {el:7.1f}s] epoch {row['epoch']} held-out: {text}", file=sys.stderr, flush=True
            )
        elif row["step"] % 5 == 0 or row["step"] == total:
            eta = el / row["step"] * (total - row["step"]) if row["step"] else 0.0
            loss = row.get("loss", float("nan"))
            print(
                f"[jiio train {el:7.1f}s] step {row['step']}/{total} loss {loss:.4g} (ETA {eta:.0f}s)",
                file=sys.stderr,
                flush=True,
            )

    return report


def run(args: argparse.Namespace) -> int:
    """Train, saving ``--out`` after every epoch; 0 when training completed, 1 when it diverged."""
    import torch

    from orchestrator.data import DataConfig, DatasetNotFoundError, load_dataset
    from orchestrator.storage import clean_stale_saves, is_remote, save_checkpoint
    from orchestrator.tasks.registry import make_trainer

    cfg = _config(args)  # ValueError: bad input, one line
    if not is_remote(args.out):
        parent = os.path.dirname(os.path.abspath(args.out))
        try:
            os.makedirs(parent, exist_ok=True)  # models/ on a fresh checkout
        except OSError as err:
            raise ValueError(f"--out {args.out}: cannot create directory {parent}: {err.strerror}") from None
    from orchestrator.storage import file_exists

    try:
        exists = file_exists(args.out) if is_remote(args.out) else os.path.exists(args.out)
    except (OSError, ValueError) as err:  # unknown scheme, no credentials, no such bucket
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"--out {args.out}: cannot reach it: {first}") from None
    if exists and not args.resume:
        raise ValueError(f"--out {args.out} exists: pass --resume to continue it, or another path")
    if args.resume and not exists:
        raise ValueError(f"--resume: no checkpoint at {args.out}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device (use --device cpu)")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        data = load_dataset(
            DataConfig(dataset=args.dataset, data_root=args.data_root, download=args.download, seed=args.seed)
        )
    except DatasetNotFoundError as err:
        raise ValueError(str(err)) from None
    torch.manual_seed(args.seed)
    trainer = make_trainer(cfg, data)
    clean_stale_saves(args.out)
    flat = {**cfg.to_flat(), "dataset": args.dataset}  # the dataset too: bench --checkpoint checks it
    if args.resume:
        state = _read_checkpoint(args.out)
        saved = dict(state["config"] or {})
        changed = sorted(k for k, v in flat.items() if saved.get(k, v) != v)
        if changed:
            diff = ", ".join(f"{k}: {saved[k]!r} -> {flat[k]!r}" for k in changed)
            raise ValueError(f"--resume with changed settings ({diff}): use the same flags, or a new --out")
        try:
            trainer.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(f"--resume: {args.out} does not fit these settings: {first}") from None

    def checkpoint() -> dict[str, Any]:
        state = trainer.state_dict()
        state["config"] = {**state["config"], "dataset": args.dataset}
        return state

    total = cfg.epochs * trainer.steps_per_epoch
    report = _progress(args.quiet, total)

    def on_row(row: dict[str, Any]) -> None:
        report(row)
        if row.get("epoch_end"):
            save_checkpoint(checkpoint(), args.out)

    result = trainer.fit(on_row)
    save_checkpoint(checkpoint(), args.out)
    shown = {k: round(v, 4) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    print(json.dumps({"status": result.status, "steps": result.steps, "checkpoint": args.out, **shown}))
    return 0 if result.status == "completed" else 1
