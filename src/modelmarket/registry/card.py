"""The model card of a package (``card:`` in ``modelmarket.yaml``): what a consumer reads before calling a model.

Validated at publish with errors that name the field (``card.<field>``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_SHORT_TEXT_CHARS = 100
MAX_SUMMARY_CHARS = 300
MAX_CARD_TEXT_CHARS = 20_000  # each long card section (description, intended use, ...)
MAX_METRICS = 100


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Metric(_Strict):
    name: str = Field(min_length=1, max_length=MAX_SHORT_TEXT_CHARS)
    value: str = Field(min_length=1, max_length=MAX_SHORT_TEXT_CHARS)
    dataset: str | None = Field(default=None, max_length=MAX_SUMMARY_CHARS)


class Card(_Strict):
    summary: str = Field(min_length=1, max_length=MAX_SUMMARY_CHARS)
    description: str | None = Field(default=None, max_length=MAX_CARD_TEXT_CHARS)
    intended_use: str | None = Field(default=None, max_length=MAX_CARD_TEXT_CHARS)
    limitations: str | None = Field(default=None, max_length=MAX_CARD_TEXT_CHARS)
    training_data: str | None = Field(default=None, max_length=MAX_CARD_TEXT_CHARS)
    evaluation_data: str | None = Field(default=None, max_length=MAX_CARD_TEXT_CHARS)
    metrics: list[Metric] = Field(default_factory=list, max_length=MAX_METRICS)
