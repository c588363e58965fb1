"""``make_balancer(name, num_tasks, **options)``: every balancer by name, for configs and CLIs."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torchjd import aggregation

from .base import Balancer
from .famo import FAMO
from .gradient import JacobianBalancer, NashMTLBalancer
from .scalarized import LinearScalarization, RandomWeighting, UncertaintyWeighting


@dataclass(frozen=True)
class BalancerSpec:
    """How to build one balancer, and what to tell users about it."""

    build: Callable[..., Balancer]
    summary: str
    #: Whether the cost per step grows with the number of tasks (one backward pass per task).
    per_task_gradients: bool


def _pcgrad(num_tasks: int) -> Balancer:
    return JacobianBalancer(num_tasks, aggregation.PCGrad())


def _cagrad(num_tasks: int, c: float = 0.4, norm_eps: float = 1e-4) -> Balancer:
    return JacobianBalancer(num_tasks, aggregation.CAGrad(c=c, norm_eps=norm_eps))


def _mgda(num_tasks: int, epsilon: float = 1e-3, max_iters: int = 100) -> Balancer:
    return JacobianBalancer(num_tasks, aggregation.MGDA(epsilon=epsilon, max_iters=max_iters))


def _imtl(num_tasks: int) -> Balancer:
    return JacobianBalancer(num_tasks, aggregation.IMTLG())


def _upgrad(num_tasks: int) -> Balancer:
    return JacobianBalancer(num_tasks, aggregation.UPGrad())


def _alignedmtl(num_tasks: int) -> Balancer:
    return JacobianBalancer(num_tasks, aggregation.AlignedMTL())


BALANCERS: dict[str, BalancerSpec] = {
    "ls": BalancerSpec(LinearScalarization, "mean of the task losses", False),
    "uw": BalancerSpec(UncertaintyWeighting, "uncertainty weighting (Kendall et al. 2018)", False),
    "famo": BalancerSpec(FAMO, "FAMO (Liu et al. 2023), O(1) in the number of tasks", False),
    "rlw": BalancerSpec(RandomWeighting, "random loss weighting (Lin et al. 2022)", False),
    "pcgrad": BalancerSpec(_pcgrad, "PCGrad (Yu et al. 2020), via torchjd", True),
    "cagrad": BalancerSpec(_cagrad, "CAGrad (Liu et al. 2021), via torchjd", True),
    "nashmtl": BalancerSpec(NashMTLBalancer, "Nash-MTL (Navon et al. 2022), via torchjd", True),
    "mgda": BalancerSpec(_mgda, "MGDA (Sener and Koltun 2018), via torchjd", True),
    "imtl": BalancerSpec(_imtl, "IMTL-G (Liu et al. 2021), via torchjd", True),
    "upgrad": BalancerSpec(_upgrad, "UPGrad (Quinton and Rey 2024), via torchjd", True),
    "alignedmtl": BalancerSpec(
        _alignedmtl, "Aligned-MTL (Senushkin et al. 2023), via torchjd", True
    ),
}


def balancer_options(name: str) -> dict[str, Any]:
    """The options ``name`` accepts, with their defaults."""
    signature = inspect.signature(_spec(name).build)
    return {
        key: parameter.default
        for key, parameter in signature.parameters.items()
        if key not in ("self", "num_tasks")
    }


def make_balancer(name: str, num_tasks: int, **options: Any) -> Balancer:
    """Build the balancer called ``name`` (see :data:`BALANCERS`) for ``num_tasks`` tasks.

    :param name: one of ``ls``, ``uw``, ``famo``, ``rlw``, ``pcgrad``, ``cagrad``, ``nashmtl``,
        ``mgda``, ``imtl``, ``upgrad``, ``alignedmtl``.
    :param num_tasks: number of tasks.
    :param options: the balancer's own options, e.g. ``weight_decay=1e-2`` for ``famo``.
    :raises ValueError: for an unknown name.
    :raises TypeError: for an option the balancer does not take, naming the ones it does.
    """
    spec = _spec(name)
    valid = balancer_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"balancer {name!r} has no option {unknown[0]!r}; its options are: "
            f"{', '.join(valid) if valid else '(none)'}"
        )
    try:
        return spec.build(num_tasks, **options)
    except ImportError as error:
        raise ImportError(
            f"the {name!r} balancer needs optional solvers: pip install 'famo-rl[solvers]' "
            f"({error})"
        ) from error


def _spec(name: str) -> BalancerSpec:
    if name not in BALANCERS:
        close = difflib.get_close_matches(str(name), BALANCERS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown balancer {name!r}{hint}; choose one of: {', '.join(BALANCERS)}")
    return BALANCERS[name]
