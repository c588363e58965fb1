"""``famo-rl``: train a multitask agent from a YAML config, or evaluate a finished run.

Exit status: 0 when done; 2 for a user error (a bad config, an unknown task, a missing run or
unreadable checkpoints), printed as one line before anything is written; 1 when a run cannot go on
(a crashed environment, a run of non-finite updates), after saying which checkpoint to resume
from; 130 or 143 after SIGINT or SIGTERM, once a checkpoint is saved. Warnings (an unreadable
checkpoint skipped, a replay buffer not restored) are printed as one line each.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from famo_rl.training.config import ConfigError, TrainConfig, load_config

EXIT_USAGE = 2
#: A run that could not go on (a crashed environment, non-finite training).
EXIT_STOPPED = 1
#: A run stopped by a signal exits with 128 + the signal's number, as shells report it.
EXIT_SIGNAL_BASE = 128


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    prefix = f"famo-rl {args.command}"
    default_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warning(prefix)
    try:
        return args.handler(args)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"{prefix}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        warnings.formatwarning = default_format


def _one_line_warning(prefix: str) -> Callable[..., str]:
    """``warnings.formatwarning`` for a command line: ``<prefix>: warning: <message>``, without
    the file, line and source that Python prints by default."""

    def format_warning(message: Warning | str, *args: object, **kwargs: object) -> str:
        del args, kwargs
        return f"{prefix}: warning: {message}\n"

    return format_warning


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="famo-rl", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train an agent from a YAML config")
    train.add_argument("config", nargs="?", help="YAML config, e.g. configs/mt10_famo.yaml")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set agent.critic_balancer=ls (repeatable)",
    )
    train.add_argument("--run-dir", help="run directory (default: runs/<config>-seed<N>-<time>)")
    train.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="learner device (default: the config's)"
    )
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("eval", help="evaluate the newest checkpoint of a run")
    evaluate.add_argument("run_dir", help="a run directory written by 'famo-rl train'")
    evaluate.add_argument("--episodes", type=int, help="episodes per task (default: the run's)")
    evaluate.add_argument("--json", dest="json_path", help="also write the results to this file")
    evaluate.add_argument("--device", choices=["auto", "cpu", "cuda"], help="device for the agent")
    evaluate.set_defaults(handler=_eval)
    return parser


def _train(args: argparse.Namespace) -> int:
    from famo_rl.training.trainer import RunStopped, Trainer

    if args.device:
        args.overrides = [*args.overrides, f"device={args.device}"]
    if args.resume:
        run_dir = Path(args.resume)
        config_path = run_dir / "config.yaml"
        if args.config:
            raise ConfigError(
                f"give either a config or --resume RUN_DIR, not both; found config "
                f"{args.config!r} and --resume {args.resume!r}"
            )
        if not config_path.is_file():
            raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
        config = load_config(config_path, args.overrides)
    else:
        if not args.config:
            raise ConfigError(
                "a config file is required, e.g. famo-rl train configs/mt10_famo.yaml"
            )
        config = load_config(args.config, args.overrides)
        run_dir = Path(args.run_dir or config.run_dir or _default_run_dir(args.config, config))
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"run directory {str(run_dir)!r} exists and is not a directory")
        if (run_dir / "checkpoints").exists():
            raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir}")

    trainer = Trainer(config, run_dir, resume=bool(args.resume))
    try:
        result = trainer.train()
    except RunStopped as stopped:
        print(f"famo-rl train: stopped: {stopped}", file=sys.stderr)
        return EXIT_STOPPED
    finally:
        trainer.close()
    if result.stopped_by is not None:
        print(
            f"famo-rl train: {result.stopped_by} received: stopped at step {result.steps}, "
            f"checkpoint saved to {result.checkpoint}; continue with famo-rl train --resume "
            f"{result.run_dir}",
            file=sys.stderr,
        )
        return EXIT_SIGNAL_BASE + int(signal.Signals[result.stopped_by])
    best = result.best_success_rate
    print(f"finished {result.steps} steps in {result.run_dir}; best eval success rate {best:.3f}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from famo_rl.evaluation import evaluate
    from famo_rl.training.checkpoints import CheckpointManager
    from famo_rl.training.trainer import build_agent, build_envs, resolve_device

    if args.episodes is not None and args.episodes < 1:
        raise ConfigError(f"--episodes must be positive, found {args.episodes}")
    run_dir = Path(args.run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    config = load_config(config_path)
    device = resolve_device(args.device or config.device)
    state = CheckpointManager(run_dir / "checkpoints").load_latest(map_location=device)
    if state is None:
        raise FileNotFoundError(f"no readable checkpoint in {run_dir / 'checkpoints'}")
    envs = build_envs(config, config.seed)
    try:
        agent = build_agent(config, envs, device)
        agent.load_state_dict(state["agent"])
        result = evaluate(agent, envs, args.episodes or config.eval_episodes)
    finally:
        envs.close()
    print(f"step {state['step']}: mean success rate {result.mean_success_rate:.3f}")
    for name, rate in result.success_rate.items():
        print(f"  {name:32s} {rate:.3f}")
    if args.json_path:
        Path(args.json_path).write_text(
            json.dumps(
                {
                    "step": state["step"],
                    "mean_success_rate": result.mean_success_rate,
                    "success_rate": result.success_rate,
                    "mean_return": result.mean_return,
                },
                indent=2,
            )
        )
    return 0


def _default_run_dir(config_path: str, config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{Path(config_path).stem}-seed{config.seed}-{stamp}"


if __name__ == "__main__":
    raise SystemExit(main())
