"""Metering: Inference Unit counting per unit kind, usage events, and the usage consumer."""

from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import count_iu

__all__ = ["UsageEvent", "count_iu"]
