"""The registry of methods: each ``+method=`` name and the class it builds.

A method registers itself where it is defined, with :func:`register_method`; the CLI's
choices, the config schema (one ``schema/method/<name>`` node per method) and the checks
that name a checkpoint's method all read :data:`METHODS`. Every module of this package is
imported by its ``__init__``, so a new method is one module here and one preset,
``conf/method/<name>.yaml``, and nothing else edited.

>>> from reco_lightning.methods import METHODS
>>> METHODS["moco"].__name__
'MoCo'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

#: the names ``+method=`` accepts, and the class each builds (filled by :func:`register_method`)
METHODS: dict[str, type] = {}

Method = TypeVar("Method", bound=type)


def register_method(name: str) -> Callable[[Method], Method]:
    """Class decorator: ``+method=name`` builds the class.

    >>> @register_method("mine")
    ... class Mine:
    ...     pass
    >>> METHODS.pop("mine").__name__
    'Mine'
    """

    def register(cls: Method) -> Method:
        known = METHODS.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"+method={name} is taken by {known.__qualname__}: choose another name"
            )
        METHODS[name] = cls
        return cls

    return register


def registered_name(cls: type) -> str:
    """The ``+method=`` name of ``cls`` (``moco`` for MoCo and its subclasses); the class's
    own name for a method outside the registry.

    >>> registered_name(METHODS["simclr"]), registered_name(int)
    ('simclr', 'int')
    """
    for klass in cls.__mro__:
        for name, registered in METHODS.items():
            if klass is registered:
                return name
    return cls.__name__


def class_names() -> dict[str, str]:
    """Each ``+method=`` name and its class's name, for messages."""
    return {name: cls.__name__ for name, cls in METHODS.items()}


__all__ = ["METHODS", "class_names", "register_method", "registered_name"]
