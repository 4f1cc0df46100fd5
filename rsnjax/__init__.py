"""rsnjax: train recurrent reservoir-sampler networks (RSNs) to sample from complex distributions.

The data flows one way: target or data → `fit` → score model → circuit → `sample` → metrics.
"""

__version__ = "0.1.0"

from . import activity, checkpoint, metrics, targets
from .checkpoint import CheckpointError, load, save
from .dsm import default_sigmas, dsm_loss, dsm_loss_with_noise, dsm_value_and_grad, geometric_sigmas
from .extent import DataExtent, data_extent
from .networks import ACTIVATIONS, SamplerOnly, ScoreNetwork
from .reservoir import RankDeficientReadoutError, ReservoirSampler
from .sampling import (SampleResult, SamplingWarning, SimulationDivergedError, as_sde, configure_cpu, sample,
                       skew_symmetric, stable_step_size)
from .sde import CircuitSDE, OutputLangevin, ReservoirLangevin
from .training import History, TrainingDivergedError, default_optimizer, fit

__all__ = [
    "__version__",
    "targets",
    "activity",
    "metrics",
    "checkpoint",
    "ScoreNetwork",
    "SamplerOnly",
    "ACTIVATIONS",
    "ReservoirSampler",
    "RankDeficientReadoutError",
    "fit",
    "History",
    "TrainingDivergedError",
    "geometric_sigmas",
    "default_sigmas",
    "default_optimizer",
    "DataExtent",
    "data_extent",
    "dsm_loss",
    "dsm_loss_with_noise",
    "dsm_value_and_grad",
    "sample",
    "stable_step_size",
    "SampleResult",
    "SimulationDivergedError",
    "SamplingWarning",
    "as_sde",
    "skew_symmetric",
    "configure_cpu",
    "CircuitSDE",
    "OutputLangevin",
    "ReservoirLangevin",
    "save",
    "load",
    "CheckpointError",
]
