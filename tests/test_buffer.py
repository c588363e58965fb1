"""The multitask replay buffer: stratified sampling, rings, checkpoints and error messages."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from famo_rl.agents import Batch, MultiTaskReplayBuffer

NUM_TASKS, OBS_DIM, ACTION_DIM = 3, 5, 2


def fill(buffer: MultiTaskReplayBuffer, steps: int, start: int = 0) -> None:
    """Add ``steps`` transitions per task; obs[:, 0] holds the task, obs[:, 1] the step number."""
    for step in range(start, start + steps):
        obs = np.zeros((buffer.num_tasks, buffer.obs_dim))
        obs[:, 0] = np.arange(buffer.num_tasks)
        obs[:, 1] = step
        action = np.full((buffer.num_tasks, buffer.action_dim), 0.5)
        reward = np.arange(buffer.num_tasks) + 10.0 * step
        terminated = np.arange(buffer.num_tasks) % 2 == 1
        buffer.add(obs, action, reward, obs + 1.0, terminated)


def make(capacity: int = 30, seed: int | None = 0) -> MultiTaskReplayBuffer:
    return MultiTaskReplayBuffer(NUM_TASKS, OBS_DIM, ACTION_DIM, capacity, seed=seed)


def test_sample_is_stratified_by_task() -> None:
    buffer = make()
    fill(buffer, 7)
    batch = buffer.sample(16)
    assert isinstance(batch, Batch)
    assert batch.obs.shape == (NUM_TASKS * 16, OBS_DIM)
    assert batch.action.shape == (NUM_TASKS * 16, ACTION_DIM)
    assert batch.reward.shape == batch.terminated.shape == batch.task_idx.shape == (48,)
    assert batch.task_idx.dtype == torch.int64
    assert torch.bincount(batch.task_idx).tolist() == [16] * NUM_TASKS
    # Every row comes from its own task's ring.
    assert torch.equal(batch.obs[:, 0].long(), batch.task_idx)
    assert torch.equal(batch.next_obs, batch.obs + 1.0)
    assert torch.equal(batch.reward, batch.task_idx + 10.0 * batch.obs[:, 1])
    assert batch.terminated.dtype == torch.float32
    assert torch.equal(batch.terminated, (batch.task_idx % 2).float())


def test_ring_wraps_around_and_keeps_the_newest() -> None:
    buffer = make(capacity=4 * NUM_TASKS + 2)  # the remainder of the division is unused
    assert buffer.capacity_per_task == 4
    fill(buffer, 6)
    assert buffer.size_per_task == 4
    assert len(buffer) == 4 * NUM_TASKS
    steps = set(buffer.sample(200).obs[:, 1].long().tolist())
    assert steps == {2, 3, 4, 5}


def test_sizes_grow_until_capacity() -> None:
    buffer = make(capacity=30)
    assert len(buffer) == buffer.size_per_task == 0
    fill(buffer, 3)
    assert buffer.size_per_task == 3
    assert len(buffer) == 3 * NUM_TASKS


def test_nbytes_counts_every_field_and_no_one_hot() -> None:
    buffer = make(capacity=30)
    per_transition = 4 * (2 * OBS_DIM + ACTION_DIM + 1) + 1
    assert buffer.nbytes == 30 * per_transition
    # The docstring's MT50 figure: 50 tasks, a million transitions, obs_dim 39, action_dim 4.
    assert 1_000_000 * (4 * (2 * 39 + 4 + 1) + 1) == 333_000_000


def test_seed_repeats_samples_whatever_the_global_seed() -> None:
    first, second = make(seed=3), make(seed=3)
    fill(first, 9)
    fill(second, 9)
    torch.manual_seed(1)
    a = first.sample(8)
    torch.manual_seed(2)
    b = second.sample(8)
    assert torch.equal(a.obs, b.obs)
    other = make(seed=4)
    fill(other, 9)
    assert not torch.equal(other.sample(8).obs, first.sample(8).obs)


def test_state_round_trip_through_weights_only_load() -> None:
    buffer = make()
    fill(buffer, 12)
    buffer.sample(4)
    stream = io.BytesIO()
    torch.save(buffer.state_dict(), stream)
    stream.seek(0)
    state = torch.load(stream, weights_only=True)

    restored = make(seed=99)
    restored.load_state_dict(state)
    assert restored.size_per_task == buffer.size_per_task
    expected, found = buffer.sample(5), restored.sample(5)
    for name in ("obs", "action", "reward", "next_obs", "terminated", "task_idx"):
        assert torch.equal(getattr(expected, name), getattr(found, name)), name
    # Adding continues at the same ring position.
    fill(buffer, 1, start=12)
    fill(restored, 1, start=12)
    assert torch.equal(buffer.sample(6).obs, restored.sample(6).obs)


def test_load_rejects_a_different_shape() -> None:
    buffer = make()
    fill(buffer, 2)
    other = MultiTaskReplayBuffer(NUM_TASKS, OBS_DIM + 1, ACTION_DIM, 30)
    with pytest.raises(ValueError, match="obs_dim=5.*obs_dim=6"):
        other.load_state_dict(buffer.state_dict())


def test_sampling_an_empty_buffer_is_an_error() -> None:
    with pytest.raises(ValueError, match="every task needs at least one transition"):
        make().sample(4)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("obs", (NUM_TASKS, OBS_DIM - 1)),
        ("action", (NUM_TASKS - 1, ACTION_DIM)),
        ("reward", (NUM_TASKS, 1)),
        ("next_obs", (NUM_TASKS,)),
        ("terminated", (NUM_TASKS + 1,)),
    ],
)
def test_add_names_the_wrong_argument_and_both_shapes(name: str, shape: tuple[int, ...]) -> None:
    arguments = {
        "obs": np.zeros((NUM_TASKS, OBS_DIM)),
        "action": np.zeros((NUM_TASKS, ACTION_DIM)),
        "reward": np.zeros(NUM_TASKS),
        "next_obs": np.zeros((NUM_TASKS, OBS_DIM)),
        "terminated": np.zeros(NUM_TASKS, dtype=bool),
    }
    expected = arguments[name].shape
    arguments[name] = np.zeros(shape)
    buffer = make()
    message = rf"^{name} must have shape {_re_shape(expected)} .*found shape {_re_shape(shape)}"
    with pytest.raises(ValueError, match=message):
        buffer.add(**arguments)
    assert len(buffer) == 0


def test_add_hints_at_a_leftover_one_hot() -> None:
    buffer = make()
    obs = np.zeros((NUM_TASKS, OBS_DIM + NUM_TASKS))
    with pytest.raises(ValueError, match="split_observation"):
        buffer.add(obs, np.zeros((3, 2)), np.zeros(3), obs, np.zeros(3))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"capacity": 2}, "capacity must hold at least one transition per task"),
        ({"capacity": 0}, "capacity must be a positive integer, found 0"),
        ({"obs_dim": 2.5}, "obs_dim must be a positive integer, found 2.5"),
        ({"num_tasks": True}, "num_tasks must be a positive integer, found True"),
    ],
)
def test_constructor_errors_name_the_parameter(arguments: dict, message: str) -> None:
    values = {"num_tasks": NUM_TASKS, "obs_dim": OBS_DIM, "action_dim": ACTION_DIM, "capacity": 9}
    with pytest.raises(ValueError, match=message):
        MultiTaskReplayBuffer(**{**values, **arguments})


def test_batch_size_must_be_positive() -> None:
    buffer = make()
    fill(buffer, 1)
    with pytest.raises(ValueError, match="batch_size_per_task must be a positive integer"):
        buffer.sample(0)


def _re_shape(shape: tuple[int, ...]) -> str:
    """A regular expression matching ``str(shape)``."""
    return str(shape).replace("(", r"\(").replace(")", r"\)")
