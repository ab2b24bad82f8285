"""Two versions of a search's best trial, side by side, each on one core until the same deadline.

    python -m bench.budget_pair --set d_model=160 --set lr=4.01e-3 --set grad_norm_clip=1.23 \\
        --set dataloader_shuffle_with_replacement=false --a lr_min_ratio=0.1 --b lr_min_ratio=0.0

The default search gives its first trial one of its two slots for the whole budget (docs/experiments.md), so a
change to ``search_spaces/default.yaml``'s fixed knobs is best judged on that trial alone, without
the search's sampling around it: the file's fixed knobs and epochs, then ``--set``, then each side's
``--a`` / ``--b``, trained by ``Trainer.fit`` under a deadline (so that the decay is fitted to it, as
in a search) in two processes at once, one thread each, as the search's two slots. Both see the same
machine; two pairs run at different times do not. It prints each epoch and each side's best valid
loss; ``--json`` writes every epoch. 860 s is what the best trial of a 15-minute search trains.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from artune import plural
from artune.config import ConfigError
from artune.search import SearchError, parse_sets
from artune.spaces import SpaceError, load_space

REPO = Path(__file__).resolve().parent.parent


def config_of(space_path: str, updates: dict[str, str]) -> dict[str, Any]:
    """The trial's knobs: the space file's fixed ones and epochs, with ``updates`` (``--set``'s) applied."""
    space = load_space(space_path).with_fixed(updates)
    missing = sorted(set(space.params) - set(updates))
    if missing:
        raise SpaceError(
            f"the trial needs a value for each searched knob: --set {' --set '.join(k + '=...' for k in missing)}"
        )
    return {**space.fixed, "epochs": space.settings.epochs, "is_save_models": False}


class TickingClock:
    """A simulated clock from 0: each look at it advances it ``tick`` seconds (a training step is one look)."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def train(config: dict[str, Any], deadline: float, name: str, tick: float = 0.0) -> None:
    """The child: one thread, the deadline's fitted decay; one JSON line per epoch on stdout."""
    import torch

    from artune.config import TrainConfig
    from artune.train import Trainer

    torch.set_num_threads(1)
    clock = TickingClock(tick) if tick else time.time
    trainer = Trainer(TrainConfig(**config), data_dir=os.environ.get("ARTUNE_DATA_DIR"), clock=clock)

    def report(metrics: dict[str, Any]) -> None:
        print(json.dumps({"side": name, **{k: v for k, v in metrics.items() if k != "sample"}}), flush=True)

    trainer.fit(report, deadline=deadline)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.budget_pair", description=__doc__.split("\n\n")[1])
    parser.add_argument("--space", default=str(REPO / "search_spaces" / "default.yaml"))
    parser.add_argument("--seconds", type=float, default=860.0, help="the deadline, from the start (default 860)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for both sides")
    parser.add_argument("--a", action="append", default=[], metavar="KEY=VALUE", help="side a only")
    parser.add_argument("--b", action="append", default=[], metavar="KEY=VALUE", help="side b only")
    parser.add_argument("--json", help="write every epoch of both sides here")
    parser.add_argument(
        "--tick",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="count --seconds on a simulated clock that advances SECONDS at each look (one per "
        "training step, a few more per epoch): what fits then does not depend on the machine",
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # CONFIG_JSON DEADLINE NAME TICK
    args = parser.parse_args(argv)
    if args.child:
        train(json.loads(args.child[0]), float(args.child[1]), args.child[2], float(args.child[3]))
        return 0
    try:  # a bad knob or value is one line, as in the CLIs, before either side starts
        common, own = parse_sets(args.set), {"a": parse_sets(args.a), "b": parse_sets(args.b)}
        sides = {name: config_of(args.space, {**common, **own[name]}) for name in own}
    except (SearchError, SpaceError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    deadline = (0.0 if args.tick else time.time()) + args.seconds  # one deadline for both sides
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.budget_pair",
                "--child",
                json.dumps(config),
                str(deadline),
                name,
                str(args.tick),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name, config in sides.items()
    }
    epochs: dict[str, list[dict[str, Any]]] = {}
    for name, proc in procs.items():
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"error: side {name} failed (exit {proc.returncode})")
        epochs[name] = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    for name in sides:
        for m in epochs[name]:
            print(
                f"{name}  epoch {m['epoch']:>3}  train_loss {m['train_loss']:.4f}  valid_loss {m['valid_loss']:.4f}  "
                f"{m['tokens_per_sec']:,.0f} tok/s  lr {m['lr']:.2e}"
            )
    for name in sides:
        changed = {**common, **own[name]}
        best = min((m["valid_loss"] for m in epochs[name]), default=float("nan"))
        print(
            f"side {name} ({' '.join(f'{k}={v}' for k, v in changed.items())}): best valid_loss {best:.4f} "
            f"after {plural(len(epochs[name]), 'epoch')}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"configs": sides, "epochs": epochs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
