"""Multitask SAC: updates happen, seeds repeat, masks and bootstrapping hold, states restore."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from famo_rl import BALANCERS
from famo_rl.agents import Batch, MultiTaskReplayBuffer, MultiTaskSAC, SACConfig
from famo_rl.agents.networks import SquashedGaussianActor, TaskConditionedMLP

NUM_TASKS, OBS_DIM, ACTION_DIM, PER_TASK = 3, 5, 2, 8
SMALL = (32, 32)
PER_TASK_METRICS = (
    "critic_loss",
    "actor_loss",
    "alpha_loss",
    "alpha",
    "entropy",
    "critic_weights",
    "actor_weights",
    "alpha_weights",
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run these tiny networks on one thread: on a busy machine, thread hand-offs dominate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_agent(seed: int = 0, num_tasks: int = NUM_TASKS, **options) -> MultiTaskSAC:
    config = SACConfig(hidden_sizes=SMALL, **options)
    return MultiTaskSAC(OBS_DIM, ACTION_DIM, num_tasks, config, seed=seed)


def make_buffer(
    num_tasks: int = NUM_TASKS, seed: int = 0, steps: int = 20
) -> MultiTaskReplayBuffer:
    buffer = MultiTaskReplayBuffer(num_tasks, OBS_DIM, ACTION_DIM, 100 * num_tasks, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        buffer.add(
            rng.normal(size=(num_tasks, OBS_DIM)),
            rng.uniform(-1, 1, size=(num_tasks, ACTION_DIM)),
            rng.normal(size=num_tasks),
            rng.normal(size=(num_tasks, OBS_DIM)),
            rng.random(num_tasks) < 0.2,
        )
    return buffer


def parameters(agent: MultiTaskSAC) -> list[torch.Tensor]:
    modules = (agent.actor, agent.critic, agent.critic_target)
    return [p.detach().clone() for m in modules for p in m.parameters()] + [
        agent.log_alpha.detach().clone()
    ]


def observations(num_envs: int = NUM_TASKS, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    one_hot = np.eye(NUM_TASKS)[np.arange(num_envs) % NUM_TASKS]
    return np.concatenate([rng.normal(size=(num_envs, OBS_DIM)), one_hot], axis=1)


# --------------------------------------------------------------------------------------------------
# Updates.


def test_update_changes_every_network_and_the_famo_logits() -> None:
    agent = make_agent()
    before = {
        "actor": [p.clone() for p in agent.actor.parameters()],
        "critic": [p.clone() for p in agent.critic.parameters()],
        "critic_target": [p.clone() for p in agent.critic_target.parameters()],
    }
    log_alpha = agent.log_alpha.detach().clone()
    buffer = make_buffer()
    for _ in range(2):
        agent.update(buffer.sample(PER_TASK))
    for name, old in before.items():
        new = list(getattr(agent, name).parameters())
        assert all(not torch.equal(a, b) for a, b in zip(old, new, strict=True)), name
    assert not torch.equal(agent.log_alpha.detach(), log_alpha)
    # FAMO's logits start at zero and move once it has seen losses before and after a step.
    assert agent.critic_balancer.logits.abs().min() > 0
    assert agent.actor_balancer.logits.abs().min() > 0


def test_metrics_are_detached_per_task_tensors() -> None:
    agent = make_agent(grad_clip=1.0)
    metrics = agent.update(make_buffer().sample(PER_TASK))
    for name in PER_TASK_METRICS:
        assert metrics[name].shape == (NUM_TASKS,), name
    for name in ("q_mean", "critic_grad_norm", "actor_grad_norm"):
        assert metrics[name].shape == (), name
    for name, value in metrics.items():
        assert isinstance(value, torch.Tensor) and not value.requires_grad, name
        assert bool(torch.isfinite(value).all()), name
    assert torch.allclose(metrics["critic_weights"].sum(), torch.tensor(1.0))


def test_absent_tasks_are_masked_out() -> None:
    agent = make_agent()
    full = make_buffer().sample(PER_TASK)
    keep = full.task_idx != 1
    batch = Batch(**{name: getattr(full, name)[keep] for name in full.__dataclass_fields__})
    metrics = agent.update(batch)
    for name in ("critic_loss", "actor_loss", "entropy", "alpha_loss", "alpha_weights"):
        assert metrics[name][1] == 0, name
    for name in ("critic_loss", "actor_loss", "entropy", "alpha_weights"):
        assert (metrics[name][[0, 2]] != 0).all(), name
    # Task 1 had no gradient: its temperature and FAMO logits did not move.
    assert agent.log_alpha[1] == 0.0
    assert agent.critic_balancer.logits[1] == 0
    assert (agent.critic_balancer.logits[[0, 2]] != 0).all()


def test_same_seed_repeats_exactly_whatever_the_global_seed() -> None:
    def run(seed: int, global_seed: int) -> tuple[list[torch.Tensor], np.ndarray]:
        torch.manual_seed(global_seed)
        agent = make_agent(seed=seed)
        buffer = make_buffer()
        for _ in range(3):
            agent.update(buffer.sample(PER_TASK))
        return parameters(agent), agent.act(observations())

    first, first_action = run(seed=5, global_seed=1)
    second, second_action = run(seed=5, global_seed=2)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    np.testing.assert_array_equal(first_action, second_action)
    other, _ = run(seed=6, global_seed=1)
    assert not torch.equal(first[0], other[0])


def test_bootstrapping_uses_terminated_only() -> None:
    agent = make_agent()
    rows = NUM_TASKS * PER_TASK
    generator = torch.Generator().manual_seed(0)

    def batch(terminated: float) -> Batch:
        generator.manual_seed(0)
        return Batch(
            obs=torch.randn(rows, OBS_DIM, generator=generator),
            action=torch.rand(rows, ACTION_DIM, generator=generator) * 2 - 1,
            reward=torch.randn(rows, generator=generator),
            next_obs=torch.randn(rows, OBS_DIM, generator=generator),
            terminated=torch.full((rows,), terminated),
            task_idx=torch.arange(NUM_TASKS).repeat_interleave(PER_TASK),
        )

    terminal = batch(1.0)
    with torch.no_grad():
        q = agent.critic(terminal.obs, terminal.action, terminal.task_idx)
    # At a terminal state the target is the reward alone: nothing is bootstrapped.
    per_row = 0.5 * (q - terminal.reward).pow(2).sum(dim=0)
    expected = per_row.view(NUM_TASKS, PER_TASK).mean(dim=1)
    state = agent.state_dict()
    metrics = agent.update(terminal)
    torch.testing.assert_close(metrics["critic_loss"], expected)

    agent.load_state_dict(state)
    assert not torch.allclose(agent.update(batch(0.0))["critic_loss"], expected)


@pytest.mark.parametrize("name", list(BALANCERS))
def test_every_balancer_runs_an_update(name: str) -> None:
    # Uncertainty weighting refuses negative losses, and the actor and temperature losses are
    # signed: it can only balance the critic.
    signed = "ls" if name == "uw" else name
    agent = make_agent(
        num_tasks=2, critic_balancer=name, actor_balancer=signed, alpha_balancer=signed
    )
    buffer = make_buffer(num_tasks=2)
    for _ in range(2):
        metrics = agent.update(buffer.sample(4))
    for key in PER_TASK_METRICS:
        assert metrics[key].shape == (2,), key
        assert bool(torch.isfinite(metrics[key]).all()), (name, key)


def test_shared_alpha_is_one_temperature_for_every_task() -> None:
    agent = make_agent(per_task_alpha=False, init_alpha=0.5, alpha_balancer="famo")
    assert agent.log_alpha.shape == (1,)
    metrics = agent.update(make_buffer().sample(PER_TASK))
    assert metrics["alpha"].shape == (NUM_TASKS,)
    assert torch.all(metrics["alpha"] == metrics["alpha"][0])
    assert metrics["alpha"][0] != 0.5


def test_multi_head_and_grad_clip_run() -> None:
    agent = make_agent(multi_head=True, grad_clip=0.1)
    metrics = agent.update(make_buffer().sample(PER_TASK))
    assert metrics["critic_grad_norm"] > 0


def test_critic_loss_decreases_on_a_bandit() -> None:
    # One-step episodes with a reward that depends on the task and the action: the critic only
    # has to regress the reward.
    agent = make_agent(seed=1, critic_lr=3e-3, actor_lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    rows = NUM_TASKS * 16
    task_idx = torch.arange(NUM_TASKS).repeat_interleave(16)
    losses = []
    for _ in range(150):
        action = torch.rand(rows, ACTION_DIM, generator=generator) * 2 - 1
        reward = (task_idx + 1.0) * action[:, 0] - action[:, 1].abs()
        obs = torch.randn(rows, OBS_DIM, generator=generator)
        batch = Batch(obs, action, reward, obs, torch.ones(rows), task_idx)
        losses.append(agent.update(batch)["critic_loss"].mean())
    first, last = torch.stack(losses[:10]).mean(), torch.stack(losses[-10:]).mean()
    assert last < 0.2 * first


# --------------------------------------------------------------------------------------------------
# Acting.


def test_act_respects_the_action_bounds() -> None:
    low, high = np.array([0.0, -3.0]), np.array([1.0, 5.0])
    agent = MultiTaskSAC(
        OBS_DIM, ACTION_DIM, NUM_TASKS, SACConfig(hidden_sizes=SMALL), "cpu", low, high, seed=0
    )
    obs = observations(num_envs=64)
    action = agent.act(obs)
    assert action.shape == (64, ACTION_DIM) and action.dtype == np.float32
    assert (action >= low).all() and (action <= high).all()
    # Stochastic actions vary; evaluation actions are the policy's mode and repeat.
    assert not np.array_equal(action, agent.act(obs))
    np.testing.assert_array_equal(agent.eval_action(obs), agent.eval_action(obs))
    agent.reset(np.ones(64, dtype=bool))


def test_act_rejects_observations_without_the_one_hot() -> None:
    agent = make_agent()
    with pytest.raises(ValueError, match=r"obs must have shape \(num_envs, 8\).*found shape"):
        agent.act(np.zeros((NUM_TASKS, OBS_DIM)))


def test_actor_log_prob_matches_torch_distributions() -> None:
    actor = SquashedGaussianActor(OBS_DIM, ACTION_DIM, NUM_TASKS, SMALL)
    obs, task_idx = torch.randn(50, OBS_DIM), torch.randint(NUM_TASKS, (50,))
    noise = torch.randn(50, ACTION_DIM)
    action, log_prob = actor(obs, task_idx, noise)
    mean, log_std = actor.distribution(obs, task_idx)
    pre_tanh = mean + log_std.exp() * noise
    expected = (
        torch.distributions.Normal(mean, log_std.exp()).log_prob(pre_tanh)
        - torch.distributions.TanhTransform().log_abs_det_jacobian(pre_tanh, action)
    ).sum(dim=-1)
    torch.testing.assert_close(log_prob, expected)
    assert action.abs().max() < 1


def test_multi_head_rows_read_their_own_head() -> None:
    net = TaskConditionedMLP(OBS_DIM, 2, NUM_TASKS, SMALL, multi_head=True)
    x, task_idx = torch.randn(30, OBS_DIM), torch.arange(NUM_TASKS).repeat(10)
    before = net(x, task_idx)
    with torch.no_grad():  # perturb task 1's head only (its rows of the last layer's weight)
        net.head.weight.view(NUM_TASKS, 2, -1)[1] += 1.0
    after = net(x, task_idx)
    changed = (after != before).any(dim=1)
    assert torch.equal(changed, task_idx == 1)


# --------------------------------------------------------------------------------------------------
# Checkpoints and errors.


def test_state_round_trip_gives_identical_actions_and_updates() -> None:
    agent = make_agent(seed=0)
    buffer = make_buffer()
    for _ in range(2):
        agent.update(buffer.sample(PER_TASK))
    stream = io.BytesIO()
    torch.save(agent.state_dict(), stream)
    stream.seek(0)
    restored = make_agent(seed=123)
    restored.load_state_dict(torch.load(stream, weights_only=True))

    obs = observations(num_envs=6)
    np.testing.assert_array_equal(agent.eval_action(obs), restored.eval_action(obs))
    np.testing.assert_array_equal(agent.act(obs), restored.act(obs))
    batch = buffer.sample(PER_TASK)
    expected, found = agent.update(batch), restored.update(batch)
    for name, value in expected.items():
        assert torch.equal(value, found[name]), name
    assert all(
        torch.equal(a, b) for a, b in zip(parameters(agent), parameters(restored), strict=True)
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_tasks": 4}, "num_tasks=3, but this agent has num_tasks=4"),
        (
            {"critic_balancer": "ls"},
            "critic_balancer='famo', but this agent has critic_balancer='ls'",
        ),
        ({"hidden_sizes": (16,)}, "hidden_sizes"),
    ],
)
def test_loading_a_different_setting_is_a_value_error(options: dict, message: str) -> None:
    state = make_agent().state_dict()
    options = dict(options)
    num_tasks = options.pop("num_tasks", NUM_TASKS)
    config = SACConfig(**{"hidden_sizes": SMALL, **options})
    other = MultiTaskSAC(OBS_DIM, ACTION_DIM, num_tasks, config, seed=0)
    with pytest.raises(ValueError, match=message):
        other.load_state_dict(state)


def test_batch_errors_name_the_field() -> None:
    agent = make_agent()
    batch = make_buffer().sample(PER_TASK)
    wrong = Batch(**{**batch.__dict__, "reward": batch.reward[:-1]})
    with pytest.raises(
        ValueError, match=r"batch.reward must have shape \(24,\).*found shape \(23,\)"
    ):
        agent.update(wrong)
    wrong = Batch(**{**batch.__dict__, "task_idx": batch.task_idx.int()})
    with pytest.raises(TypeError, match="batch.task_idx must be a 1-D torch.int64 tensor"):
        agent.update(wrong)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"discount": 1.5}, "discount must lie in"),
        ({"tau": 0.0}, "tau must lie in"),
        ({"critic_lr": -1.0}, "critic_lr must be positive, found -1.0"),
        ({"hidden_sizes": ()}, "hidden_sizes must be a non-empty sequence"),
        ({"grad_clip": 0.0}, "grad_clip must be positive or None"),
        ({"target_entropy": math.inf}, "target_entropy must be finite"),
    ],
)
def test_config_errors_name_the_field(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SACConfig(**options)


def test_unknown_balancer_and_bad_bounds_are_value_errors() -> None:
    with pytest.raises(ValueError, match="unknown balancer 'famoo'"):
        make_agent(critic_balancer="famoo")
    with pytest.raises(ValueError, match="action_low must be below action_high"):
        MultiTaskSAC(OBS_DIM, ACTION_DIM, NUM_TASKS, action_low=1.0, action_high=1.0)
    with pytest.raises(ValueError, match=r"action_high must be a scalar or have shape \(2,\)"):
        MultiTaskSAC(OBS_DIM, ACTION_DIM, NUM_TASKS, action_high=np.ones(3))
    with pytest.raises(ValueError, match="seed must be a non-negative integer or None, found -1"):
        MultiTaskSAC(OBS_DIM, ACTION_DIM, NUM_TASKS, seed=-1)
