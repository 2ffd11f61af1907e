"""Metering: Inference Unit counting per unit kind, usage events, the usage consumer and the usage read model."""

from modelmarket.metering.consumer import MeteringService
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import UnitKind, count_iu
from modelmarket.metering.usage import UsageService, UsageSummary

__all__ = ["MeteringService", "UnitKind", "UsageEvent", "UsageService", "UsageSummary", "count_iu"]
