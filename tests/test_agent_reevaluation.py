"""FAMO's cheaper re-measurements: ``next_batch`` and ``famo_reevaluation_every`` skip forward
passes, and the balancer still learns.

With ``same_batch`` (the default, as in the paper's code) FAMO's losses after each step are
re-measured on the same batch; with ``next_batch`` they are the next update's losses, measured on
the next batch before its step. On a fixed batch of terminal transitions the critic's target does
not move, so the two must give exactly the same training run: that is the proof that
``next_batch`` is the same algorithm with the measurement taken one update later. With
``famo_reevaluation_every=n`` one update in ``n`` measures and steps the logits. With
``famo_reevaluation_rows`` below 1 the losses after the step are measured on a stratified subset of
the rows, and FAMO compares them with the same rows' losses before the step.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from famo_rl.agents import Batch, MultiTaskReplayBuffer, MultiTaskSAC, SACConfig
from famo_rl.agents.sac import TaskGroups
from famo_rl.balancers import FAMO
from famo_rl.training.config import ConfigError, config_from_dict
from famo_rl.training.trainer import Trainer

NUM_TASKS, OBS_DIM, ACTION_DIM, PER_TASK = 3, 5, 2, 8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: on a busy machine, thread hand-offs would dominate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_agent(seed: int = 0, **options) -> MultiTaskSAC:
    config = SACConfig(hidden_sizes=(32, 32), **options)
    return MultiTaskSAC(OBS_DIM, ACTION_DIM, NUM_TASKS, config, seed=seed)


def make_buffer(seed: int = 0) -> MultiTaskReplayBuffer:
    buffer = MultiTaskReplayBuffer(NUM_TASKS, OBS_DIM, ACTION_DIM, 100 * NUM_TASKS, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(20):
        buffer.add(
            rng.normal(size=(NUM_TASKS, OBS_DIM)),
            rng.uniform(-1, 1, size=(NUM_TASKS, ACTION_DIM)),
            rng.normal(size=NUM_TASKS) * np.array([0.1, 1.0, 10.0]),
            rng.normal(size=(NUM_TASKS, OBS_DIM)),
            np.zeros(NUM_TASKS, dtype=bool),
        )
    return buffer


def terminal_batch() -> Batch:
    """A fixed batch of terminal transitions: the critic's target is the reward alone."""
    generator = torch.Generator().manual_seed(0)
    rows = NUM_TASKS * PER_TASK
    task_idx = torch.arange(NUM_TASKS).repeat_interleave(PER_TASK)
    return Batch(
        obs=torch.randn(rows, OBS_DIM, generator=generator),
        action=torch.rand(rows, ACTION_DIM, generator=generator) * 2 - 1,
        reward=torch.randn(rows, generator=generator) * (10.0 ** task_idx.float()),
        next_obs=torch.randn(rows, OBS_DIM, generator=generator),
        terminated=torch.ones(rows),
        task_idx=task_idx,
    )


def count_forward_passes(agent: MultiTaskSAC, updates: int) -> Counter:
    """Forward passes of the actor and of the (trained) critic over ``updates`` updates."""
    counts: Counter = Counter()
    for name in ("actor", "critic"):
        getattr(agent, name).register_forward_hook(lambda *_, name=name: counts.update([name]))
    buffer = make_buffer()
    for _ in range(updates):
        agent.update(buffer.sample(PER_TASK))
    return counts


# --------------------------------------------------------------------------------------------------
# Configuration.


def test_same_batch_is_the_default() -> None:
    assert SACConfig().famo_reevaluation == "same_batch"


def test_unknown_reevaluation_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="famo_reevaluation must be 'same_batch' or 'next_batch'"):
        SACConfig(famo_reevaluation="sometimes")  # type: ignore[arg-type]  # the error under test


@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_reevaluation_every_must_be_a_positive_integer(every: object) -> None:
    with pytest.raises(ValueError, match="famo_reevaluation_every must be a positive integer"):
        SACConfig(famo_reevaluation_every=every)  # type: ignore[arg-type]  # the error under test


def test_config_files_accept_and_check_the_option() -> None:
    config = config_from_dict({"agent": {"famo_reevaluation": "next_batch"}})
    assert config.agent.famo_reevaluation == "next_batch"
    with pytest.raises(ConfigError, match="famo_reevaluation"):
        config_from_dict({"agent": {"famo_reevaluation": "nextbatch"}})


# --------------------------------------------------------------------------------------------------
# The extra forward passes are skipped.


def test_next_batch_makes_no_more_forward_passes_than_averaging() -> None:
    updates = 3
    ls = count_forward_passes(make_agent(critic_balancer="ls", actor_balancer="ls"), updates)
    same = count_forward_passes(make_agent(), updates)
    following = count_forward_passes(make_agent(famo_reevaluation="next_batch"), updates)
    # Averaging: the actor on next_obs and on obs, the critic for its loss and the actor's.
    assert ls == Counter(actor=2 * updates, critic=2 * updates)
    # same_batch re-measures both losses after their steps: one more pass of each network for
    # the actor's loss, and one more of the critic for its own.
    assert same == Counter(actor=3 * updates, critic=4 * updates)
    assert following == ls


def test_every_n_re_measures_on_one_update_in_n() -> None:
    updates, every = 8, 4
    ls = count_forward_passes(make_agent(critic_balancer="ls", actor_balancer="ls"), updates)
    sparse = count_forward_passes(make_agent(famo_reevaluation_every=every), updates)
    # Updates 0 and 4 re-measure: one more actor pass and two more critic passes each.
    measured = updates // every
    assert sparse == ls + Counter(actor=measured, critic=2 * measured)


def test_next_batch_hands_famo_the_next_updates_losses() -> None:
    agent = make_agent(famo_reevaluation="next_batch")
    received: dict[str, list[torch.Tensor]] = {"critic": [], "actor": []}
    for role, losses in received.items():
        balancer = getattr(agent, f"{role}_balancer")
        original = balancer.update

        def record(task_losses, mask=None, original=original, losses=losses) -> None:
            losses.append(task_losses.clone())
            original(task_losses, mask)

        balancer.update = record
    buffer = make_buffer()
    metrics = [agent.update(buffer.sample(PER_TASK)) for _ in range(3)]
    for role, losses in received.items():
        # The first update has nothing to compare with; then each closes the previous step.
        assert len(losses) == 2, role
        for after, later in zip(losses, metrics[1:], strict=True):
            torch.testing.assert_close(after, later[f"{role}_loss"], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# The balancer still learns.


def test_logits_move_from_the_second_update() -> None:
    agent = make_agent(famo_reevaluation="next_batch")
    buffer = make_buffer()
    agent.update(buffer.sample(PER_TASK))
    for balancer in (agent.critic_balancer, agent.actor_balancer):
        assert torch.equal(balancer.logits, torch.zeros(NUM_TASKS))
    agent.update(buffer.sample(PER_TASK))
    for balancer in (agent.critic_balancer, agent.actor_balancer):
        assert bool((balancer.logits != 0).all())


@pytest.mark.parametrize("reevaluation", ["same_batch", "next_batch"])
def test_every_n_steps_the_logits_on_one_update_in_n(reevaluation: str) -> None:
    agent = make_agent(famo_reevaluation=reevaluation, famo_reevaluation_every=3)
    buffer = make_buffer()
    history = [agent.critic_balancer.logits.clone()]
    for _ in range(7):
        agent.update(buffer.sample(PER_TASK))
        history.append(agent.critic_balancer.logits.clone())
    moved = [not torch.equal(a, b) for a, b in zip(history, history[1:], strict=False)]
    # same_batch steps the logits within updates 0, 3 and 6; next_batch one update later, when
    # the following batch closes the measured step.
    expected = [0, 3, 6] if reevaluation == "same_batch" else [1, 4]
    assert [index for index, changed in enumerate(moved) if changed] == expected


def test_on_a_fixed_terminal_batch_next_batch_equals_same_batch() -> None:
    # The critic's loss depends only on its parameters here, so the next update's loss *is* the
    # loss after the step on the same batch: both settings must train identically.
    batch = terminal_batch()
    runs = {}
    for reevaluation in ("same_batch", "next_batch"):
        agent = make_agent(seed=3, actor_balancer="ls", famo_reevaluation=reevaluation)
        losses = [agent.update(batch)["critic_loss"] for _ in range(30)]
        runs[reevaluation] = (losses, agent)
    same_losses, same_agent = runs["same_batch"]
    next_losses, next_agent = runs["next_batch"]
    torch.testing.assert_close(torch.stack(next_losses), torch.stack(same_losses))
    for same, following in zip(
        same_agent.critic.parameters(), next_agent.critic.parameters(), strict=True
    ):
        torch.testing.assert_close(following, same)
    # The logits are one step behind under next_batch until its next update closes the step.
    next_agent.critic_balancer.update(_critic_losses(next_agent, batch))
    torch.testing.assert_close(next_agent.critic_balancer.logits, same_agent.critic_balancer.logits)
    assert same_agent.critic_balancer.logits.abs().max() > 1e-2


def _critic_losses(agent: MultiTaskSAC, batch: Batch) -> torch.Tensor:
    """The per-task critic losses of a terminal batch (target = reward), without gradients.

    The agent's action bounds are the default [-1, 1], so the networks see the batch's actions.
    """
    with torch.no_grad():
        q = agent.critic(batch.obs, batch.action, batch.task_idx)
        per_row = 0.5 * (q - batch.reward).pow(2).sum(dim=0)
    return per_row.view(NUM_TASKS, PER_TASK).mean(dim=1)


def test_a_task_absent_from_the_next_batch_keeps_its_logit() -> None:
    agent = make_agent(famo_reevaluation="next_batch")
    buffer = make_buffer()
    agent.update(buffer.sample(PER_TASK))
    full = buffer.sample(PER_TASK)
    keep = full.task_idx != 1
    agent.update(Batch(**{name: getattr(full, name)[keep] for name in full.__dataclass_fields__}))
    logits = agent.critic_balancer.logits
    assert logits[1] == 0
    assert bool((logits[[0, 2]] != 0).all())


def test_a_restored_agent_skips_one_logit_step_and_goes_on() -> None:
    buffer = make_buffer()
    agent = make_agent(famo_reevaluation="next_batch")
    for _ in range(2):
        agent.update(buffer.sample(PER_TASK))
    restored = make_agent(seed=1, famo_reevaluation="next_batch")
    restored.load_state_dict(agent.state_dict())
    saved_logits = restored.critic_balancer.logits.clone()
    restored.update(buffer.sample(PER_TASK))  # the pending step was not saved: nothing to close
    torch.testing.assert_close(restored.critic_balancer.logits, saved_logits)
    restored.update(buffer.sample(PER_TASK))
    assert not torch.equal(restored.critic_balancer.logits, saved_logits)


@pytest.mark.slow
def test_sac_with_next_batch_learns_the_synthetic_suite(tmp_path: Path) -> None:
    config = config_from_dict(
        {
            "env": {"name": "synthetic", "num_tasks": 4, "reward_scales": [1.0, 1.0, 1.0, 1.0]},
            "agent": {
                "hidden_sizes": [64, 64],
                "actor_lr": 1e-3,
                "critic_lr": 1e-3,
                "alpha_lr": 1e-3,
                "init_alpha": 0.1,
                "famo_reevaluation": "next_batch",
            },
            "total_steps": 2000,
            "warmup_steps": 200,
            "batch_size_per_task": 64,
            "buffer_capacity": 100_000,
            "eval_every": 1000,
            "eval_episodes": 10,
            "log_every": 500,
            "checkpoint_every": 2000,
            "progress": False,
            "num_threads": 1,
        }
    )
    trainer = Trainer(config, tmp_path / "run")
    try:
        result = trainer.train()
    finally:
        trainer.close()
    assert result.last_eval is not None
    assert result.best_success_rate >= 0.8, result.last_eval.success_rate


# --------------------------------------------------------------------------------------------------
# Re-measuring on a stratified subset of the rows (famo_reevaluation_rows).


def count_forward_rows(agent: MultiTaskSAC, updates: int) -> Counter:
    """Rows through the actor and the (trained) critic over ``updates`` updates."""
    counts: Counter = Counter()
    for name in ("actor", "critic"):
        network = getattr(agent, name)
        network.register_forward_hook(
            lambda _, inputs, __, name=name: counts.update({name: inputs[0].shape[0]})
        )
    buffer = make_buffer()
    for _ in range(updates):
        agent.update(buffer.sample(PER_TASK))
    return counts


def record_updates(balancer: FAMO) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Make ``balancer.update`` record what it is given: ``(after, before or None)``."""
    calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    original = balancer.update

    def record(task_losses_after, mask=None, task_losses_before=None) -> None:
        before = None if task_losses_before is None else task_losses_before.clone()
        calls.append((task_losses_after.clone(), before))
        original(task_losses_after, mask, task_losses_before)

    balancer.update = record  # type: ignore[method-assign]  # a spy on the instance
    return calls


def test_all_rows_is_the_default() -> None:
    assert SACConfig().famo_reevaluation_rows == 1.0


@pytest.mark.parametrize("rows", [0, 0.0, -0.25, 1.5, float("nan"), True, "half"])
def test_rows_must_be_a_fraction(rows: object) -> None:
    with pytest.raises(ValueError, match=r"famo_reevaluation_rows must be a fraction in \(0, 1\]"):
        SACConfig(famo_reevaluation_rows=rows)  # type: ignore[arg-type]  # the error under test


def test_rows_below_one_need_same_batch() -> None:
    with pytest.raises(ValueError, match="needs famo_reevaluation='same_batch'"):
        SACConfig(famo_reevaluation="next_batch", famo_reevaluation_rows=0.5)
    assert SACConfig(famo_reevaluation="next_batch", famo_reevaluation_rows=1).famo_reevaluation


def test_config_files_accept_and_check_the_rows() -> None:
    config = config_from_dict({"agent": {"famo_reevaluation_rows": 0.25}})
    assert config.agent.famo_reevaluation_rows == 0.25
    with pytest.raises(ConfigError, match=r"famo_reevaluation_rows must be a fraction.*found 0\.0"):
        config_from_dict({"agent": {"famo_reevaluation_rows": 0}})
    with pytest.raises(ConfigError, match="famo_reevaluation_rows"):
        config_from_dict({"agent": {"famo_reevaluation_rows": "a quarter"}})
    with pytest.raises(ConfigError, match="needs famo_reevaluation='same_batch'"):
        config_from_dict(
            {"agent": {"famo_reevaluation": "next_batch", "famo_reevaluation_rows": 0.5}}
        )


def test_subset_takes_each_tasks_share_first_rows_first() -> None:
    # Tasks 0, 1, 3 with 10, 3 and 7 rows, shuffled; task 2 is absent. A quarter: 5 rows, taken
    # by position within their task: 0 (tasks 0, 1, 3), 1/10 (task 0), 1/7 (task 3).
    task_idx = torch.tensor([0] * 10 + [1] * 3 + [3] * 7)
    task_idx = task_idx[torch.randperm(20, generator=torch.Generator().manual_seed(0))]
    groups = TaskGroups.from_task_idx(task_idx, 4, torch.float32)
    rows, subset = groups.subset(0.25)
    assert rows.shape == (5,)
    for task, share in ((0, 2), (1, 1), (2, 0), (3, 2)):
        positions = (task_idx == task).nonzero().flatten()
        assert sorted(rows[task_idx[rows] == task].tolist()) == positions[:share].tolist()
    values = torch.randn(20, generator=torch.Generator().manual_seed(1))
    expected = torch.zeros(4)
    for task in (0, 1, 3):
        expected[task] = values[rows[task_idx[rows] == task]].mean()
    torch.testing.assert_close(subset.mean(values[rows]), expected)
    assert torch.equal(subset.present, groups.present)


def test_subset_of_equal_tasks_takes_the_same_rows_from_each() -> None:
    groups = TaskGroups.from_task_idx(torch.arange(4).repeat(16), 4, torch.float32)
    rows, _ = groups.subset(0.25)
    # 16 rows per task, interleaved: each task's first 4.
    assert sorted(rows.tolist()) == list(range(16))


def test_a_tiny_share_keeps_one_row_of_every_task() -> None:
    groups = TaskGroups.from_task_idx(torch.arange(3).repeat_interleave(4), 3, torch.float32)
    rows, subset = groups.subset(0.01)
    assert rows.tolist() == [0, 4, 8]
    assert bool(subset.present.all())


def test_all_rows_hand_famo_the_full_batch_only() -> None:
    agent = make_agent(famo_reevaluation_rows=1.0)
    calls = record_updates(agent.critic_balancer)
    agent.update(make_buffer().sample(PER_TASK))
    ((after, before),) = calls
    assert before is None


def test_famo_given_the_same_losses_before_steps_identically() -> None:
    losses = torch.tensor([0.5, 2.0, 8.0], requires_grad=True)
    after = torch.tensor([0.4, 1.9, 8.5])
    logits = []
    for paired in (False, True):
        famo = FAMO(3)
        famo.combine(losses)
        famo.update(after, task_losses_before=losses.detach() if paired else None)
        logits.append(famo.logits)
    assert torch.equal(logits[0], logits[1])
    assert bool((logits[0] != 0).all())


def test_famo_compares_with_the_losses_before_it_is_given() -> None:
    # The paired losses replace combine()'s in the logit step: the same step as a FAMO that saw
    # those losses in combine() (with non-negative losses the floors stay at zero in both).
    full, subset_before = torch.tensor([0.5, 2.0, 8.0]), torch.tensor([0.7, 1.5, 9.0])
    after = torch.tensor([0.6, 1.4, 8.0])
    paired, reference = FAMO(3), FAMO(3)
    paired.combine(full.requires_grad_())
    paired.update(after, task_losses_before=subset_before)
    reference.combine(subset_before.clone().requires_grad_())
    reference.update(after)
    torch.testing.assert_close(paired.logits, reference.logits, rtol=0, atol=0)


def test_famo_lowers_its_floors_to_admit_the_losses_before() -> None:
    # Signed losses (the actor's): combine() sets the estimated floors at twice its losses; the
    # subset's losses before lie below them, and must be shifted by floors that admit them, as if
    # combine() had seen them.
    full, subset_before = torch.tensor([-1.0, -2.0, 3.0]), torch.tensor([-3.0, -2.5, 2.0])
    after = torch.tensor([-3.2, -2.4, 1.5])
    paired, reference = FAMO(3), FAMO(3)
    paired.combine(full.requires_grad_())
    paired.update(after, task_losses_before=subset_before)
    reference.combine(subset_before.clone().requires_grad_())
    reference.update(after)
    torch.testing.assert_close(paired.floors, reference.floors, rtol=0, atol=0)
    torch.testing.assert_close(paired.logits, reference.logits, rtol=0, atol=0)


def test_famo_checks_the_losses_before() -> None:
    famo = FAMO(3)
    famo.combine(torch.ones(3, requires_grad=True))
    with pytest.raises(ValueError, match=r"task_losses_before must have shape \(3,\)"):
        famo.update(torch.ones(3), task_losses_before=torch.ones(2))


def test_a_non_finite_loss_before_leaves_its_logit() -> None:
    famo = FAMO(3)
    famo.combine(torch.ones(3, requires_grad=True))
    famo.update(torch.full((3,), 0.5), task_losses_before=torch.tensor([1.0, float("nan"), 2.0]))
    assert famo.logits[1] == 0
    assert bool((famo.logits[[0, 2]] != 0).all())


def test_rows_hand_famo_paired_losses_of_the_same_rows() -> None:
    # A fixed batch of terminal transitions, 8 rows per task, a quarter re-measured: rows 0-1,
    # 8-9 and 16-17. Computed by hand from copies of the networks before the update.
    batch = terminal_batch()
    agent = make_agent(seed=2, famo_reevaluation_rows=0.25)
    critic_calls = record_updates(agent.critic_balancer)
    actor_calls = record_updates(agent.actor_balancer)
    critic_before = copy.deepcopy(agent.critic)
    actor_before = copy.deepcopy(agent.actor)
    alpha = agent.log_alpha.detach().exp().clone()
    generator_state = agent.generator.get_state()
    metrics = agent.update(batch)

    rows = torch.tensor([0, 1, 8, 9, 16, 17])
    obs, action, task_idx = batch.obs[rows], batch.action[rows], batch.task_idx[rows]
    with torch.no_grad():

        def critic_losses(critic: torch.nn.Module) -> torch.Tensor:
            q = critic(obs, action, task_idx)
            return (0.5 * (q - batch.reward[rows]).pow(2).sum(dim=0)).view(NUM_TASKS, 2).mean(1)

        # The update draws the next actions' noise first, then the actor's.
        generator = torch.Generator()
        generator.set_state(generator_state)
        torch.randn((len(batch.task_idx), ACTION_DIM), generator=generator)
        noise = torch.randn((len(batch.task_idx), ACTION_DIM), generator=generator)[rows]

        def actor_losses(actor: torch.nn.Module) -> torch.Tensor:
            # The actor's step comes after the critic's: both sides read the stepped critic.
            sample, log_prob = actor(obs, task_idx, noise)
            q = agent.critic(obs, sample, task_idx).amin(dim=0)
            return (alpha[task_idx] * log_prob - q).view(NUM_TASKS, 2).mean(1)

        expected = {
            "critic": (critic_losses(agent.critic), critic_losses(critic_before)),
            "actor": (actor_losses(agent.actor), actor_losses(actor_before)),
        }
    for role, calls in (("critic", critic_calls), ("actor", actor_calls)):
        ((after, before),) = calls
        assert before is not None
        torch.testing.assert_close(after, expected[role][0], msg=role)
        torch.testing.assert_close(before, expected[role][1], msg=role)
        # The subset's losses before the step are not the whole batch's that backward() saw.
        assert not torch.allclose(before, metrics[f"{role}_loss"]), role


def test_rows_cut_the_forward_rows_of_the_re_measurement() -> None:
    updates, batch = 3, NUM_TASKS * PER_TASK
    ls = count_forward_rows(make_agent(critic_balancer="ls", actor_balancer="ls"), updates)
    full = count_forward_rows(make_agent(), updates)
    quarter = count_forward_rows(make_agent(famo_reevaluation_rows=0.25), updates)
    # Averaging: the actor on next_obs and on obs, the critic for its loss and the actor's.
    assert ls == Counter(actor=2 * batch * updates, critic=2 * batch * updates)
    # The re-measurement: the actor once, the critic twice (its own loss, the actor's).
    assert full - ls == Counter(actor=batch * updates, critic=2 * batch * updates)
    # A quarter: 2 of the 8 rows of each task.
    subset = 2 * NUM_TASKS
    assert quarter - ls == Counter(actor=subset * updates, critic=2 * subset * updates)


def test_rows_with_every_n_re_measure_a_subset_on_one_update_in_n() -> None:
    updates, every, subset = 8, 4, 2 * NUM_TASKS
    ls = count_forward_rows(make_agent(critic_balancer="ls", actor_balancer="ls"), updates)
    agent = make_agent(famo_reevaluation_rows=0.25, famo_reevaluation_every=every)
    sparse = count_forward_rows(agent, updates)
    measured = updates // every
    assert sparse - ls == Counter(actor=subset * measured, critic=2 * subset * measured)
    assert bool((agent.critic_balancer.logits != 0).all())


def test_rows_leave_an_absent_tasks_logit() -> None:
    agent = make_agent(famo_reevaluation_rows=0.25)
    full = make_buffer().sample(PER_TASK)
    keep = full.task_idx != 1
    agent.update(Batch(**{name: getattr(full, name)[keep] for name in full.__dataclass_fields__}))
    for balancer in (agent.critic_balancer, agent.actor_balancer):
        assert balancer.logits[1] == 0
        assert bool((balancer.logits[[0, 2]] != 0).all())
