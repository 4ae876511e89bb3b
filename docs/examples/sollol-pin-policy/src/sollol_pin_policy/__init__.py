"""SOLLOL placement policy ``pin``: run pinned models only on the nodes named in ``SOLLOL_PINS``.

The ``sollol`` entry point ``pin`` names this module; pluggy registers the hook implementation it
re-exports. Nothing is read or started at import.
"""

from sollol_pin_policy.policy import (
    ENVIRONMENT_VARIABLE,
    POLICY,
    Pins,
    parse_pins,
    pins_from_environment,
    place,
    sollol_place,
)

__all__ = [
    "ENVIRONMENT_VARIABLE",
    "POLICY",
    "Pins",
    "parse_pins",
    "pins_from_environment",
    "place",
    "sollol_place",
]
