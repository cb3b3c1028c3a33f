"""Named fault-injection points, so tests can crash a real run at an exact step (publish, a given date).

Set `ACCRETE_FAULT_INJECT` to a comma-separated list of point names; a run that reaches one raises
`InjectedFault`. Unset (the normal case), each check is one dictionary lookup.
"""
from __future__ import annotations

import os

ENV_VAR = "ACCRETE_FAULT_INJECT"


class InjectedFault(RuntimeError):
    """A crash requested by a test through ACCRETE_FAULT_INJECT; never raised in normal runs."""


def maybe_fail(point: str) -> None:
    """Raise InjectedFault when `point` is listed in ACCRETE_FAULT_INJECT."""
    wanted = os.environ.get(ENV_VAR)
    if wanted and point in {name.strip() for name in wanted.split(",")}:
        raise InjectedFault(f"injected fault at {point}")
