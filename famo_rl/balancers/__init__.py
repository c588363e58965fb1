"""Balancers: turn per-task losses into one update. See :class:`Balancer` for the interface."""

from .base import Balancer
from .factory import BALANCERS, BalancerSpec, balancer_options, make_balancer
from .famo import FAMO
from .gradient import JacobianBalancer, NashMTLBalancer
from .scalarized import LinearScalarization, RandomWeighting, UncertaintyWeighting

__all__ = [
    "BALANCERS",
    "FAMO",
    "Balancer",
    "BalancerSpec",
    "JacobianBalancer",
    "LinearScalarization",
    "NashMTLBalancer",
    "RandomWeighting",
    "UncertaintyWeighting",
    "balancer_options",
    "make_balancer",
]
