"""Packages that can be called: ``srr.measure(model, data)`` and ``srr.derive(objective, ...)``
call a function while ``srr.measure.X`` / ``srr.derive.X`` stay attribute access on the package."""
from __future__ import annotations

import sys
import types
from typing import Callable


def make_callable(module_name: str, function: Callable) -> None:
    """Make the module ``module_name`` callable as ``function``."""

    class CallableModule(types.ModuleType):
        __doc__ = f"Calling this package calls ``{function.__module__}.{function.__name__}``."

        def __call__(self, *args, **kwargs):
            return function(*args, **kwargs)

    sys.modules[module_name].__class__ = CallableModule
