"""famo-rl: multitask reinforcement learning with FAMO."""

from importlib.metadata import PackageNotFoundError, version

from .balancers import (
    BALANCERS,
    FAMO,
    Balancer,
    LinearScalarization,
    UncertaintyWeighting,
    balancer_options,
    make_balancer,
)

try:
    __version__ = version("famo-rl")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = [
    "BALANCERS",
    "FAMO",
    "Balancer",
    "LinearScalarization",
    "UncertaintyWeighting",
    "__version__",
    "balancer_options",
    "make_balancer",
]
