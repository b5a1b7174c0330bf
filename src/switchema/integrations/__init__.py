"""Integrations with training frameworks, imported lazily (the frameworks are optional).

* :class:`switchema.integrations.lightning.EMACallback`: a Lightning ``Callback``
  (``pip install 'switchema[lightning]'``).
* :class:`switchema.integrations.transformers.EMATrainerCallback`: a Hugging Face
  ``transformers.TrainerCallback`` (``pip install 'switchema[transformers]'``).

``import switchema.integrations`` imports neither framework; accessing ``EMACallback`` or
``EMATrainerCallback`` here imports the module that defines it (and so its framework).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["EMACallback", "EMATrainerCallback"]

_WHERE = {"EMACallback": "lightning", "EMATrainerCallback": "transformers"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        module = importlib.import_module(f"{__name__}.{_WHERE[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
