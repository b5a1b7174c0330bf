"""switchema: fast, correct weight averaging for PyTorch (EMA, Switch EMA, SWA).

>>> from switchema import EMA
>>> ema = EMA(model, decay=0.999)     # doctest: +SKIP
>>> ema.update()                      # after every optimizer step  # doctest: +SKIP
>>> ema.switch()                      # Switch EMA, e.g. at every epoch end  # doctest: +SKIP
>>> with ema.swapped():               # evaluate with the averaged weights  # doctest: +SKIP
...     evaluate(model)
"""

from .averaging import EMA, SWA, WeightAverager, unwrap_model
from .batchnorm import BUFFER_POLICIES, has_batchnorm, recompute_bn
from .schedules import (
    Constant,
    DecaySchedule,
    EMAWarmup,
    LinearWarmup,
    PowerWarmup,
    decay_to_half_life,
    half_life_to_decay,
)

__version__ = "0.1.0"

__all__ = [
    "EMA",
    "SWA",
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
    "decay_to_half_life",
    "__version__",
]
