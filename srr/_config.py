"""The one base of the frozen config dataclasses (``CRATEConfig``, ``TrainConfig``).

``replace``, ``to_dict`` and ``from_dict`` with the same rules everywhere: an unknown field is an
error that names it and lists the valid ones (``TypeError`` from ``replace``, ``ValueError`` from
``from_dict``, which reads stored data).
"""
from __future__ import annotations

import dataclasses
from typing import TypeVar

C = TypeVar("C", bound="ConfigBase")


class ConfigBase:
    """Mixin for a ``@dataclass(frozen=True)`` config whose fields are plain values."""

    @classmethod
    def field_names(cls) -> list[str]:
        return sorted(f.name for f in dataclasses.fields(cls))

    @classmethod
    def _unknown(cls, names) -> list[str]:
        return sorted(set(names) - set(cls.field_names()))

    def replace(self: C, **changes) -> C:
        """A copy with ``changes`` (validated again); unknown names are a TypeError listing the valid ones."""
        unknown = self._unknown(changes)
        if unknown:
            raise TypeError(f"unknown {type(self).__name__} field(s) {unknown}; valid fields: {self.field_names()}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain dict (str/int/float/bool/None only): JSON- and ``torch.load(weights_only=True)``-safe."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict) -> C:
        """The config stored as ``data``; unknown fields are a ValueError listing the valid ones."""
        if not isinstance(data, dict):
            raise TypeError(f"config must be a dict of {cls.__name__} fields, got {type(data).__name__}")
        unknown = cls._unknown(data)
        if unknown:
            raise ValueError(f"config holds unknown field(s) {unknown} of {cls.__name__}; valid fields: "
                             f"{cls.field_names()}")
        return cls(**data)
