"""switchema: fast, correct weight averaging for PyTorch (EMA, Switch EMA, SWA).

>>> import torch
>>> from switchema import EMA
>>> model = torch.nn.Linear(3, 1)
>>> ema = EMA(model, decay=0.999)
>>> ema.update()                      # after every optimizer step
>>> ema.switch()                      # Switch EMA, e.g. at every epoch end
>>> with ema.swapped():               # evaluate with the averaged weights
...     out = model(torch.ones(1, 3))
>>> ema.step, ema.n_updates
(1, 1)
"""

from . import checkpoints
from .averaging import EMA, SWA, WeightAverager, unwrap_model
from .batchnorm import BUFFER_POLICIES, has_batchnorm, recompute_bn
from .bema import BEMA
from .power import PowerEMA
from .profiles import (
    decay_to_sigma_rel,
    gamma_to_sigma_rel,
    sigma_rel_to_decay,
    sigma_rel_to_gamma,
)
from .schedules import (
    Constant,
    DecaySchedule,
    EMAWarmup,
    LinearWarmup,
    PowerWarmup,
    decay_to_half_life,
    half_life_to_decay,
    scale_decay,
)

__version__ = "0.1.0"

__all__ = [
    "EMA",
    "SWA",
    "PowerEMA",
    "BEMA",
    "checkpoints",
    "WeightAverager",
    "unwrap_model",
    "recompute_bn",
    "has_batchnorm",
    "BUFFER_POLICIES",
    "DecaySchedule",
    "Constant",
    "EMAWarmup",
    "PowerWarmup",
    "LinearWarmup",
    "half_life_to_decay",
    "scale_decay",
    "decay_to_half_life",
    "sigma_rel_to_gamma",
    "gamma_to_sigma_rel",
    "sigma_rel_to_decay",
    "decay_to_sigma_rel",
    "__version__",
]
