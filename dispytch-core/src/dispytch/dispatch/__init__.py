"""The parts :class:`~dispytch.EventDispatcher` is a facade over, each usable and tested
alone, without a consumer:

- :mod:`~dispytch.dispatch.routing`: :class:`RouteTable`, which handlers take a route;
- :mod:`~dispytch.dispatch.scheduler`: :class:`LaneScheduler`, slots, lanes, workers, the
  per-lane cap and drain;
- :mod:`~dispytch.dispatch.settle`: :class:`AckPolicy` and :class:`Settler`, outcome ->
  counters -> ack / nack / requeue.
"""

from __future__ import annotations

from dispytch.dispatch.routing import HandlerEntry, Match, RouteTable
from dispytch.dispatch.scheduler import LaneScheduler, default_lane_cap
from dispytch.dispatch.settle import AckPolicy, Settler

__all__ = [
    "AckPolicy",
    "HandlerEntry",
    "LaneScheduler",
    "Match",
    "RouteTable",
    "Settler",
    "default_lane_cap",
]
