"""Training throughput on MT10 against Stable-Baselines3's SAC, start-up times, and a profile.

Three measurements, in one process run:

1. **Steps per second** of our training loop (:class:`famo_rl.training.Trainer`) and of
   ``stable_baselines3.SAC`` on the same MT10 environments (SB3 steps them through
   :class:`famo_rl.sb3.MultiTaskVecEnv`, the adapter SB3 users would otherwise write themselves),
   with the same hidden sizes, total batch, replay capacity, one gradient update per vector step
   (each vector step advances all 10 tasks) and the same warm-up of random actions. Contenders:
   ``ours famo`` (the recommended ``configs/mt10_famo.yaml``: FAMO on the critic and actor losses),
   ``ours famo every 4`` (the same with ``famo_reevaluation_every=4``), ``ours famo rows 0.25``
   (``famo_reevaluation_rows=0.25``), ``ours ls`` (plain averaging, the same work as SB3's SAC),
   the same four ``overlapped`` (environments in worker processes, stepping while the learner
   updates: ``overlap_env_steps``, the workers at the ``idle`` scheduling priority),
   ``ours ls overlapped, workers low`` and ``..., workers normal`` (``overlap_worker_priority``
   ``low``: nice 19; ``normal``: unchanged), ``sb3``, ``sb3 async``
   (SB3 on the same worker-process environments; its loop waits for them) and ``sb3+famo``
   (:class:`famo_rl.sb3.MultiTaskSAC`, FAMO inside SB3). After the warm-up and one discarded block
   with updates, rounds of one block per contender run in a rotating order; each block's rate is
   divided by SB3's rate in the same round. Evaluation and checkpoints are left out: they are not
   per-step costs. Each block of our loop is one call to ``Trainer.train``, which starts with a
   ``reset`` of the environments that a single long run pays once: its time is left out (SB3's
   ``learn(reset_num_timesteps=False)`` does not reset).
2. **Start-up time** of MT10 and MT50: the first build with an empty goal cache (cold, a fresh
   temporary folder), a second build from the cache, and Meta-World's own ``gym.make_vec`` for
   reference, each up to the first ``reset``. Measured after the throughput runs, so the process
   has already imported everything and loaded MuJoCo: "cold" means an empty goal cache.
3. **Where the time goes** in one training step of our loop (and of SB3's, for comparison):
   timers around the environment step, the policy, the replay buffer, the update (critic, actor,
   temperature, target, FAMO's re-measurement) and the logging, then the top functions of a
   ``cProfile`` run.

Run: ``python -m benchmarks.training`` (about 20 minutes on 2 CPU cores); ``--quick`` for a smoke
test (two Meta-World tasks, tiny networks, MT50 skipped).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import pstats
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym

from benchmarks._common import (
    machine_description,
    markdown_table,
    set_threads,
    spread,
    summarize,
    write_json,
)
from famo_rl.envs import make_envs
from famo_rl.envs.crashes import WorkerPriority
from famo_rl.training.config import config_from_dict
from famo_rl.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
#: The two Meta-World tasks ``--quick`` trains on instead of MT10.
QUICK_TASKS = ["reach-v3", "push-v3"]


@dataclass(frozen=True)
class OurLoop:
    """One of our contenders: the balancer of the critic and actor losses, FAMO's re-measurement
    options and whether environment steps overlap the update (worker-process environments)."""

    balancer: str
    reevaluation_every: int = 1
    reevaluation_rows: float = 1.0
    overlap: bool = False
    #: ``overlap_worker_priority`` of overlapped loops (the config's default unless stated).
    worker_priority: WorkerPriority = "idle"


OURS: dict[str, OurLoop] = {
    "ours famo": OurLoop("famo"),
    "ours famo every 4": OurLoop("famo", reevaluation_every=4),
    "ours famo rows 0.25": OurLoop("famo", reevaluation_rows=0.25),
    "ours ls": OurLoop("ls"),
    "ours famo overlapped": OurLoop("famo", overlap=True),
    "ours famo every 4 overlapped": OurLoop("famo", reevaluation_every=4, overlap=True),
    "ours famo rows 0.25 overlapped": OurLoop("famo", reevaluation_rows=0.25, overlap=True),
    "ours ls overlapped": OurLoop("ls", overlap=True),
    "ours ls overlapped, workers low": OurLoop("ls", overlap=True, worker_priority="low"),
    "ours ls overlapped, workers normal": OurLoop("ls", overlap=True, worker_priority="normal"),
}
#: SB3 contender name -> (FAMO through our plug-in, environments in worker processes).
SB3: dict[str, tuple[bool, bool]] = {
    "sb3": (False, False),
    "sb3 async": (False, True),
    "sb3+famo": (True, False),
}
CONTENDERS = (*OURS, *SB3)
#: Logging happens every ``log_every`` steps; the profile reports it amortised at this default.
DEFAULT_LOG_EVERY = 1000


@dataclass(frozen=True)
class Setting:
    """Network and batch sizes shared by every contender, and the block length to time (a
    multiple of 4, so that ``ours famo every 4`` re-measures equally often in every block)."""

    name: str
    hidden_sizes: tuple[int, ...]
    batch_size_per_task: int
    block_steps: int


@dataclass(frozen=True)
class Run:
    """What every contender shares beyond the :class:`Setting`."""

    env_name: str | list[str]
    num_tasks: int
    warmup_steps: int
    buffer_capacity: int
    threads: int
    device: str
    scratch: Path


class Contender(Protocol):
    """A training loop that can be advanced by some vector steps and then closed."""

    name: str

    def advance(self, steps: int) -> float:
        """Run ``steps`` more vector steps; return the seconds spent on set-up that one long run
        would pay only once (they are left out of the timings)."""
        ...

    def close(self) -> None: ...


class StepTimers:
    """Wall time spent inside chosen methods, per category, by wrapping them on the instance."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, owner: object, method: str, category: str) -> None:
        original = getattr(owner, method)

        @functools.wraps(original)
        def timed_method(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[category] += time.perf_counter() - start
                self.calls[category] += 1

        setattr(owner, method, timed_method)


# --------------------------------------------------------------------------------------------------
# The contenders.


class _TrainerWithoutEvaluation(Trainer):
    """Our training loop unchanged, minus evaluation and checkpoints, which ``train()`` runs at its
    last step and which are not per-step costs."""

    def _evaluate(self) -> None:  # type: ignore[override]  # the result is not used by train()
        return None

    def save_checkpoint(self) -> Path:
        return self.run_dir


class Ours:
    """:class:`famo_rl.training.Trainer`, advanced block by block through ``train()``."""

    def __init__(self, name: str, setting: Setting, run: Run) -> None:
        self.name = name
        loop = OURS[name]
        config = config_from_dict(
            {
                "env": {
                    "name": run.env_name,
                    "vector_strategy": "async" if loop.overlap else "sync",
                },
                "overlap_env_steps": loop.overlap,
                "overlap_worker_priority": loop.worker_priority,
                "agent": {
                    "hidden_sizes": list(setting.hidden_sizes),
                    "critic_balancer": loop.balancer,
                    "actor_balancer": loop.balancer,
                    "alpha_balancer": "ls",
                    "famo_reevaluation_every": loop.reevaluation_every,
                    "famo_reevaluation_rows": loop.reevaluation_rows,
                },
                "seed": 0,
                "device": run.device,
                "total_steps": 1,
                "warmup_steps": run.warmup_steps,
                "batch_size_per_task": setting.batch_size_per_task,
                "buffer_capacity": run.buffer_capacity,
                "log_every": DEFAULT_LOG_EVERY,
                "progress": False,
                "num_threads": run.threads,
            }
        )
        folder = run.scratch / f"{name.replace(' ', '-')}-{setting.name.replace(' ', '-')}"
        self.trainer = _TrainerWithoutEvaluation(config, folder)
        # Every train() call starts with a reset of the environments, which one long run does once.
        self.reset_timer = StepTimers()
        self.reset_timer.wrap(self.trainer.envs, "reset", "reset")

    def advance(self, steps: int) -> float:
        before = self.reset_timer.seconds["reset"]
        self.trainer.config.total_steps = self.trainer.step + steps
        self.trainer.train()
        return self.reset_timer.seconds["reset"] - before

    def close(self) -> None:
        self.trainer.close()


class StableBaselines:
    """``stable_baselines3.SAC`` (or our SB3 plug-in with FAMO) on the same environments."""

    def __init__(self, name: str, setting: Setting, run: Run) -> None:
        from stable_baselines3 import SAC

        from famo_rl.sb3 import MultiTaskSAC, make_vec_env

        self.name = name
        famo, workers = SB3[name]
        env = make_vec_env(run.env_name, seed=0, vector_strategy="async" if workers else "sync")
        self.num_envs = env.num_envs
        options: dict[str, Any] = {
            "learning_rate": 3e-4,
            "buffer_size": run.buffer_capacity,
            # SB3 counts transitions (vector steps times sub-environments) where we count steps.
            "learning_starts": run.warmup_steps * self.num_envs,
            "batch_size": setting.batch_size_per_task * run.num_tasks,
            "tau": 0.005,
            "gamma": 0.99,
            "train_freq": 1,
            "gradient_steps": 1,
            "policy_kwargs": {"net_arch": list(setting.hidden_sizes)},
            "seed": 0,
            "device": run.device,
            "verbose": 0,
        }
        if famo:
            self.model = MultiTaskSAC("MlpPolicy", env, balancer="famo", **options)
        else:
            self.model = SAC("MlpPolicy", env, **options)
        self.started = False

    def advance(self, steps: int) -> float:
        # learn() resets the environments only on its first call.
        self.model.learn(steps * self.num_envs, reset_num_timesteps=not self.started)
        self.started = True
        return 0.0

    def close(self) -> None:
        assert self.model.env is not None
        self.model.env.close()


def build(name: str, setting: Setting, run: Run) -> Contender:
    """The loop called ``name`` (see :data:`CONTENDERS`), ready for its first ``advance``."""
    if name in OURS:
        return Ours(name, setting, run)
    return StableBaselines(name, setting, run)


# --------------------------------------------------------------------------------------------------
# 1. Steps per second.


def timed(function: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def timed_block(contender: Contender, steps: int) -> float:
    """Seconds of ``steps`` steps, without the once-per-run set-up that ``advance`` reports."""
    start = time.perf_counter()
    excluded = contender.advance(steps)
    return time.perf_counter() - start - excluded


def throughput(
    contenders: Sequence[Contender], setting: Setting, run: Run, rounds: int
) -> dict[str, Any]:
    """Vector steps per second of each contender, interleaved block by block."""
    for contender in contenders:
        contender.advance(run.warmup_steps)
    for contender in contenders:
        contender.advance(setting.block_steps)  # the first updates: allocations, caches
    rates: dict[str, list[float]] = {c.name: [] for c in contenders}
    ratios: dict[str, list[float]] = {c.name: [] for c in contenders}
    for round_index in range(rounds):
        shift = round_index % len(contenders)
        this_round = {}
        for contender in [*contenders[shift:], *contenders[:shift]]:
            seconds = timed_block(contender, setting.block_steps)
            this_round[contender.name] = setting.block_steps / seconds
        for name, rate in this_round.items():
            rates[name].append(rate)
            if "sb3" in this_round:
                ratios[name].append(rate / this_round["sb3"])
    return {
        name: {
            "steps_per_second": summarize(rates[name]),
            "rates": rates[name],
            **({"ratio_to_sb3": summarize(ratios[name])} if ratios[name] else {}),
        }
        for name in rates
    }


# --------------------------------------------------------------------------------------------------
# 2. Start-up time.


def startup_times(env_name: str | list[str], cached_repeats: int) -> dict[str, Any]:
    """Seconds to build and reset: empty goal cache, from the cache, and ``gym.make_vec``."""
    with tempfile.TemporaryDirectory() as cache_dir:
        cold = timed(functools.partial(_build_and_reset, env_name, cache_dir))
        cached = [
            timed(functools.partial(_build_and_reset, env_name, cache_dir))
            for _ in range(cached_repeats)
        ]
    reference = timed(functools.partial(_metaworld_make_vec, env_name))
    return {
        "cold_seconds": cold,
        "cached_seconds": summarize(cached),
        "metaworld_make_vec_seconds": reference,
    }


def _build_and_reset(env_name: str | list[str], cache_dir: str) -> None:
    envs = make_envs(env_name, seed=0, cache_dir=cache_dir)
    envs.reset()
    envs.close()


def _metaworld_make_vec(env_name: str | list[str]) -> None:
    if isinstance(env_name, str):
        envs = gym.make_vec(
            f"Meta-World/{env_name}", seed=0, use_one_hot=True, vector_strategy="sync"
        )
    else:
        envs = gym.make_vec(
            "Meta-World/custom-mt-envs",
            envs_list=env_name,
            seed=0,
            use_one_hot=True,
            vector_strategy="sync",
        )
    envs.reset()
    envs.close()


# --------------------------------------------------------------------------------------------------
# 3. Where the time goes.


#: Top-level categories of a step; the ``update`` ones nest inside ``update``.
OUR_CATEGORIES = {
    "env step": ("envs", "step"),
    "policy (act)": ("agent", "act"),
    "buffer add": ("buffer", "add"),
    "buffer sample": ("buffer", "sample"),
    "update": ("agent", "update"),
    "episode stats": ("tracker", "record"),
    "logging": (None, "_log_training"),
}
OUR_UPDATE_PARTS = {
    "update: critic": "update_critic",
    "update: actor": "update_actor",
    "update: temperature": "update_alpha",
    "update: target critics": "update_target",
    "update: FAMO re-measurement": "_measure_losses_after",
}


def profile_ours(contender: Ours, steps: int, profile_steps: int) -> dict[str, Any]:
    """Per-step milliseconds by category, with logging every 10 steps timed and amortised."""
    trainer = contender.trainer
    timers = StepTimers()
    for category, (attribute, method) in OUR_CATEGORIES.items():
        owner = trainer if attribute is None else getattr(trainer, attribute)
        timers.wrap(owner, method, category)
    for category, method in OUR_UPDATE_PARTS.items():
        timers.wrap(trainer.agent, method, category)
    trainer.config.log_every = 10
    total = timed_block(contender, steps)
    trainer.config.log_every = DEFAULT_LOG_EVERY
    breakdown = _breakdown(timers, total, steps, nested=tuple(OUR_UPDATE_PARTS))
    return {"breakdown": breakdown, "top_functions": top_functions(contender, profile_steps)}


def profile_sb3(contender: StableBaselines, steps: int, profile_steps: int) -> dict[str, Any]:
    """The same breakdown for SB3: its adapter and monitor are split from the env's own step."""
    model = contender.model
    assert model.env is not None and model.replay_buffer is not None
    timers = StepTimers()
    timers.wrap(model.env.venv.vector_env, "step", "env step")  # type: ignore[attr-defined]
    timers.wrap(model.env, "step_wait", "vec env total")
    timers.wrap(model, "_sample_action", "policy (act)")
    timers.wrap(model.replay_buffer, "add", "buffer add")
    timers.wrap(model.replay_buffer, "sample", "update: buffer sample")
    timers.wrap(model, "train", "update")
    total = timed_block(contender, steps)
    timers.seconds["VecEnv adapter + VecMonitor"] = (
        timers.seconds.pop("vec env total") - timers.seconds["env step"]
    )
    timers.calls["VecEnv adapter + VecMonitor"] = timers.calls.pop("vec env total")
    breakdown = _breakdown(timers, total, steps, nested=("update: buffer sample",))
    return {"breakdown": breakdown, "top_functions": top_functions(contender, profile_steps)}


def _breakdown(
    timers: StepTimers, total: float, steps: int, nested: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Milliseconds per step and share of the step, logging amortised at the default interval."""
    per_step = {category: 1000 * seconds / steps for category, seconds in timers.seconds.items()}
    total_ms = 1000 * total / steps
    if "logging" in per_step:
        per_call = 1000 * timers.seconds["logging"] / max(timers.calls["logging"], 1)
        total_ms += per_call / DEFAULT_LOG_EVERY - per_step["logging"]
        per_step["logging"] = per_call / DEFAULT_LOG_EVERY
    top_level = sum(ms for category, ms in per_step.items() if category not in nested)
    per_step["other (loop bookkeeping)"] = max(total_ms - top_level, 0.0)
    per_step["total"] = total_ms
    return {
        category: {"ms_per_step": ms, "share": ms / total_ms} for category, ms in per_step.items()
    }


def top_functions(contender: Contender, steps: int, count: int = 12) -> list[dict[str, Any]]:
    """The functions with the most own time in a ``cProfile`` run of ``steps`` steps.

    cProfile slows Python-heavy code (the environments) more than torch's kernels: read the
    ranking, not the absolute numbers.
    """
    profiler = cProfile.Profile()
    profiler.enable()
    contender.advance(steps)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, line, function), entry in stats.stats.items():  # type: ignore[attr-defined]
        own_seconds, cumulative = entry[2], entry[3]
        where = f"{Path(filename).name}:{line}" if line else filename
        rows.append(
            {
                "function": f"{function} ({where})",
                "own_ms_per_step": 1000 * own_seconds / steps,
                "cumulative_ms_per_step": 1000 * cumulative / steps,
            }
        )
    rows.sort(key=lambda row: row["own_ms_per_step"], reverse=True)
    return rows[:count]


# --------------------------------------------------------------------------------------------------
# Reporting.


def throughput_table(results: dict[str, Any], num_tasks: int) -> str:
    """Steps per second of every loop at every setting, with the ratio to SB3."""
    rows = []
    for setting_name, contenders in results.items():
        for name, entry in contenders.items():
            rate = entry["steps_per_second"]
            ratio = entry.get("ratio_to_sb3")
            rows.append(
                [
                    setting_name,
                    f"`{name}`",
                    spread(rate, 1),
                    f"{num_tasks * rate['median']:.0f}",
                    "-" if ratio is None else f"{spread(ratio)}x",
                ]
            )
    headers = [
        "setting",
        "loop",
        "vector steps/s [min-max]",
        "env steps/s",
        "ratio to sb3 [min-max]",
    ]
    return markdown_table(headers, rows)


def startup_table(results: dict[str, Any]) -> str:
    """Cold, cached and Meta-World start-up seconds per benchmark."""
    rows = [
        [
            name,
            f"{entry['cold_seconds']:.1f}",
            f"{entry['cached_seconds']['median']:.1f}",
            f"{entry['metaworld_make_vec_seconds']:.1f}",
        ]
        for name, entry in results.items()
    ]
    headers = ["benchmark", "cold (empty cache), s", "cached, s", "Meta-World gym.make_vec, s"]
    return markdown_table(headers, rows)


def profile_table(profiles: dict[str, dict[str, Any]]) -> str:
    """Categories as rows, one ``ms (share)`` column per profiled loop."""
    columns = list(profiles)
    categories = list(
        dict.fromkeys(c for entry in profiles.values() for c in entry["breakdown"] if c != "total")
    )
    rows = []
    for category in [*categories, "total"]:
        row = [category]
        for column in columns:
            cell = profiles[column]["breakdown"].get(category)
            row.append("-" if cell is None else f"{cell['ms_per_step']:.1f} ({cell['share']:.0%})")
        rows.append(row)
    return markdown_table(["ms per step (share)", *columns], rows)


def top_functions_table(rows: list[dict[str, Any]]) -> str:
    """The ``cProfile`` ranking of :func:`top_functions`."""
    body = [[f"`{row['function']}`", f"{row['own_ms_per_step']:.2f}"] for row in rows]
    return markdown_table(["function (file:line)", "own ms per step, under cProfile"], body)


#: Stacked segments of the profile plot: name -> categories of the breakdown it sums (nested
#: categories are taken out of "update" below, so that every millisecond is drawn once).
PLOT_SEGMENTS = {
    "env step": ("env step",),
    "policy (act)": ("policy (act)",),
    "replay buffer": ("buffer add", "buffer sample", "update: buffer sample"),
    "update": ("update",),
    "FAMO re-measurement": ("update: FAMO re-measurement",),
    "other": (
        "VecEnv adapter + VecMonitor",
        "episode stats",
        "logging",
        "other (loop bookkeeping)",
    ),
}
_NESTED_IN_UPDATE = ("update: buffer sample", "update: FAMO re-measurement")


def plot_segments(breakdown: dict[str, dict[str, float]]) -> dict[str, float]:
    """Milliseconds per step of each :data:`PLOT_SEGMENTS` entry; they add up to the total."""
    ms = {category: entry["ms_per_step"] for category, entry in breakdown.items()}
    ms["update"] = ms.get("update", 0.0) - sum(ms.get(c, 0.0) for c in _NESTED_IN_UPDATE)
    return {
        segment: sum(ms.get(category, 0.0) for category in categories)
        for segment, categories in PLOT_SEGMENTS.items()
    }


def plot_profiles(profiles: dict[str, dict[str, Any]], path: Path) -> None:
    """Stacked bars of milliseconds per step, one panel per setting, one bar per loop.

    Profile names read ``"<loop>, <setting>"``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, dict[str, dict[str, float]]] = {}
    for name, entry in profiles.items():
        loop, setting = name.split(", ", 1)
        panels.setdefault(setting, {})[loop] = plot_segments(entry["breakdown"])
    figure, axes = plt.subplots(len(panels), 1, figsize=(8, 1.6 * len(panels) + 1.0))
    axes = list(axes) if len(panels) > 1 else [axes]
    colors = plt.get_cmap("tab10").colors
    for axis, (setting, loops) in zip(axes, panels.items(), strict=True):
        left = [0.0] * len(loops)
        for index, segment in enumerate(PLOT_SEGMENTS):
            widths = [segments[segment] for segments in loops.values()]
            axis.barh(list(loops), widths, left=left, label=segment, color=colors[index])
            left = [a + b for a, b in zip(left, widths, strict=True)]
        axis.set_title(setting, fontsize=9)
        axis.set_xlabel("milliseconds per vector step")
        axis.invert_yaxis()
    axes[0].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


# --------------------------------------------------------------------------------------------------
# Command line.


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    parser.add_argument("--rounds", type=int, default=7, help="timed blocks per contender")
    parser.add_argument("--warmup-steps", type=int, default=200, help="random-action steps")
    parser.add_argument("--buffer", type=int, default=1_000_000, help="replay capacity")
    parser.add_argument("--profile-steps", type=int, default=0, help="0: two blocks")
    parser.add_argument("--cached-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (all loops)")
    parser.add_argument("--device", default="cpu", help="learner device of every loop")
    parser.add_argument("--skip-mt50", action="store_true", help="no MT50 start-up (75 s)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--quick", action="store_true", help="2 tasks, tiny networks, no MT50")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup_steps, args.buffer, args.cached_repeats = 2, 10, 10_000, 1
        args.skip_mt50 = True
    return args


def settings_for(args: argparse.Namespace) -> list[Setting]:
    """The paper's setting and a small one; tiny networks with ``--quick``."""
    if args.quick:
        return [Setting("tiny (2x32, batch 16)", (32, 32), 8, 4)]
    return [
        Setting("paper (3x400, batch 1280)", (400, 400, 400), 128, 12),
        Setting("small (2x256, batch 250)", (256, 256), 25, 200),
    ]


def measure_setting(
    setting: Setting, run: Run, names: Sequence[str], args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Throughput of every contender at one setting, then profiles of ours and of SB3."""
    contenders = [build(name, setting, run) for name in names]
    try:
        rates = throughput(contenders, setting, run, args.rounds)
        steps = args.profile_steps or 2 * setting.block_steps
        cprofile_steps = max(steps // 4, 1)
        profiles = {}
        for contender in contenders:
            if isinstance(contender, Ours) and contender.name == "ours famo":
                profiles[f"ours famo, {setting.name}"] = profile_ours(
                    contender, steps, cprofile_steps
                )
            elif isinstance(contender, StableBaselines) and contender.name == "sb3":
                profiles[f"sb3, {setting.name}"] = profile_sb3(contender, steps, cprofile_steps)
    finally:
        for contender in contenders:
            contender.close()
    return rates, profiles


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    env_name: str | list[str] = QUICK_TASKS if args.quick else "MT10"
    num_tasks = len(QUICK_TASKS) if args.quick else 10
    names = list(dict.fromkeys(["sb3", *args.contenders]))
    results: dict[str, Any] = {"throughput": {}, "profile": {}, "startup": {}}
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*precision lowered.*")
        run = Run(
            env_name,
            num_tasks,
            args.warmup_steps,
            args.buffer,
            args.threads,
            args.device,
            Path(scratch),
        )
        for setting in settings_for(args):
            started = time.perf_counter()
            rates, profiles = measure_setting(setting, run, names, args)
            results["throughput"][setting.name] = rates
            results["profile"].update(profiles)
            print(f"{setting.name}: {time.perf_counter() - started:.0f} s", flush=True)
        benchmarks: dict[str, str | list[str]] = {"2 tasks" if args.quick else "MT10": env_name}
        if not args.skip_mt50:
            benchmarks["MT50"] = "MT50"
        for label, name in benchmarks.items():
            results["startup"][label] = startup_times(name, args.cached_repeats)
    write_outputs(results, args, num_tasks)
    return 0


def write_outputs(results: dict[str, Any], args: argparse.Namespace, num_tasks: int) -> None:
    """JSON with every sample, a markdown report, a profile plot."""
    sections = [
        "### Vector steps per second (each step advances every task and makes one update)\n",
        throughput_table(results["throughput"], num_tasks),
        "\n### Start-up time, up to the first reset\n",
        startup_table(results["startup"]),
        "\n### Where a step's time goes (timers around each part)\n",
        profile_table(results["profile"]),
    ]
    for name, entry in results["profile"].items():
        sections.append(f"\n### Top functions by own time, {name}\n")
        sections.append(top_functions_table(entry["top_functions"]))
    text = "\n".join(sections)
    print(text)
    name = "training_quick" if args.quick else "training"
    settings = {key: str(value) for key, value in vars(args).items() if key != "out"}
    settings["settings"] = str(settings_for(args))
    write_json(
        args.out / f"{name}.json",
        {"machine": machine_description(args.device), "settings": settings, **results},
    )
    (args.out / f"{name}.md").write_text(text)
    plot_profiles(results["profile"], args.out / f"{name}_profile.png")


if __name__ == "__main__":
    raise SystemExit(main())
