"""The model card of a package (``card:`` in ``modelmarket.yaml``): what a consumer reads before calling a model.

One schema answers three standards (docs/model-cards.md maps each field to them):

- the sections of Mitchell et al., "Model Cards for Model Reporting": model details, intended use (with primary
  users and out-of-scope uses), factors, metrics, evaluation data, training data, quantitative analyses, ethical
  considerations, caveats and recommendations;
- the documentation the EU AI Act asks of providers of general-purpose models (Annex XI, and Annex XII for
  downstream providers): intended tasks, acceptable use policy, architecture and parameter count, training
  methodology, training data (type, provenance, curation), compute, energy, evaluation, known limitations;
- the Hugging Face card metadata not already in the manifest (``language``, ``tags``, ``library_name``). The
  license is the manifest's, ``pipeline_tag`` derives from its ``task``, ``base_model`` and ``datasets`` from its
  ``lineage``: the card does not repeat them.

Only ``summary`` is required by the schema; the operator's gate policy may require more (``card_required_problems``)
and ``card_gaps`` lists the recommended fields left empty. Validated at publish with errors that name the field
(``card.<field>``). A card that uses only the original fields serialises exactly as before, so published versions
keep their digest.
"""

from __future__ import annotations

import math
import re
from datetime import date
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)

from modelmarket.core.errors import InvalidInput

MAX_SHORT_TEXT_CHARS = 100
MAX_SUMMARY_CHARS = 300
MAX_LINE_CHARS = 300  # a name, a contact, a hardware description, one list item
MAX_LIST_ITEM_CHARS = 2_000  # one out-of-scope use, one intended task
MAX_CARD_TEXT_CHARS = 20_000  # each long card section (description, intended use, ...)
MAX_METRICS = 100
MAX_LIST_ITEMS = 32  # developers, primary users, out-of-scope uses, intended tasks
MAX_TAGS = 50
MAX_LANGUAGES = 50
MAX_PARAMETER_COUNT = 10**15
MAX_FLOPS = 1e30
MAX_ENERGY_KWH = 1e12
MAX_CO2_KG = 1e12
LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}\Z")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+/-]{0,49}\Z")
EnergySource = Literal[
    "coal", "oil", "natural-gas", "nuclear", "wind", "solar", "geothermal", "hydropower", "biofuel", "unknown", "other"
]
"""Where the training energy came from (the values CycloneDX uses)."""
ENERGY_SOURCES: tuple[str, ...] = get_args(EnergySource)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _empty(value: Any) -> bool:
    """Whether a card value says nothing: None, blank text, an empty list or a section with nothing in it."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | tuple | dict):
        return len(value) == 0
    if isinstance(value, BaseModel):
        return all(_empty(getattr(value, name)) for name in type(value).model_fields)
    return False


class _Section(_Strict):
    """A nested part of the card; fields not given are left out of its serialised form."""

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if value is not None and value != []}


def _pattern(regex: re.Pattern[str], what: str) -> Any:
    def check(value: str) -> str:
        if not regex.match(value):
            raise ValueError(f"{value[:40]!r} is not {what}")
        return value

    return AfterValidator(check)


def _number(value: Any) -> Any:
    """A count or amount written as a number (``1.6e21`` may be quoted: YAML reads ``1e21`` as text)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"{value[:40]!r} is not a number") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Line = Annotated[str, Field(min_length=1, max_length=MAX_LINE_CHARS)]
Item = Annotated[str, Field(min_length=1, max_length=MAX_LIST_ITEM_CHARS)]
Text = Annotated[str, Field(max_length=MAX_CARD_TEXT_CHARS)]
Language = Annotated[
    str, Field(max_length=35), _pattern(LANGUAGE_RE, "an ISO 639 language code such as 'en' or 'pt-BR'")
]
Tag = Annotated[str, _pattern(TAG_RE, "a tag (1-50 letters, digits and . _ : + / -, starting with a letter or digit)")]
Amount = Annotated[float, BeforeValidator(_number)]


class Metric(_Strict):
    name: str = Field(min_length=1, max_length=MAX_SHORT_TEXT_CHARS)
    value: str = Field(min_length=1, max_length=MAX_SHORT_TEXT_CHARS)
    dataset: str | None = Field(default=None, max_length=MAX_SUMMARY_CHARS)


class ModelDetails(_Section):
    """Mitchell's "Model details"; ``architecture`` and ``parameter_count`` are also EU AI Act Annex XI 1(d)."""

    developers: list[Line] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    """The people or organisations that developed the model (not necessarily the provider who serves it)."""
    contact: Line | None = None
    """Where to send questions or comments about the model."""
    release_date: date | None = None
    model_type: Line | None = None
    """The kind of model in a few words, e.g. "multinomial logistic regression", "decoder-only transformer"."""
    architecture: Text | None = None
    parameter_count: Annotated[int, Field(strict=True, ge=0, le=MAX_PARAMETER_COUNT)] | None = None
    paper: Item | None = None
    """A paper or other resource with more information (a title, a URL)."""
    citation: Text | None = None


class Factors(_Section):
    """Mitchell's "Factors": the groups, instruments and environments that change how the model performs."""

    relevant: Text | None = None
    """Factors foreseeably relevant to performance (e.g. accent, handwriting style, text domain)."""
    evaluation: Text | None = None
    """Which of them the reported evaluation covers, and why."""


class TrainingDetails(_Section):
    """How the model was made (EU AI Act Annex XI 2(b) and 2(c)); ``card.training_data`` stays the summary."""

    methodology: Text | None = None
    """Training process, techniques and key design choices; what the model optimises for."""
    data_type: Text | None = None
    """The kind of data (images, text, audio, tabular), its languages and scope."""
    data_provenance: Text | None = None
    """Where the data comes from and how it was obtained and selected."""
    data_curation: Text | None = None
    """Cleaning, filtering and checks for unsuitable data and identifiable biases."""
    data_size: Line | None = None
    """The number of data points (e.g. "1,347 images", "2 trillion tokens")."""


class Compute(_Section):
    """Computational resources used to train the model (EU AI Act Annex XI 2(d))."""

    hardware: Item | None = None
    training_time: Line | None = None
    training_flops: Annotated[Amount, Field(ge=0, le=MAX_FLOPS)] | None = None
    notes: Text | None = None
    """How the figures were measured or estimated (e.g. "FLOPs estimated as 6 x parameters x tokens")."""


class Energy(_Section):
    """Known or estimated energy used to train the model (EU AI Act Annex XI 2(e))."""

    training_energy_kwh: Annotated[Amount, Field(ge=0, le=MAX_ENERGY_KWH)] | None = None
    training_co2_kg: Annotated[Amount, Field(ge=0, le=MAX_CO2_KG)] | None = None
    source: EnergySource | None = None
    notes: Text | None = None
    """How the figures were measured or estimated, or why they are not known."""


ORIGINAL_FIELDS = (
    "summary", "description", "intended_use", "limitations", "training_data", "evaluation_data", "metrics",
)  # fmt: skip
"""Always serialised (as they always were); every later field only when given, so old packages keep their digest."""


class Card(_Strict):
    summary: str = Field(min_length=1, max_length=MAX_SUMMARY_CHARS)
    description: str | None = Field(default=None, max_length=MAX_CARD_TEXT_CHARS)
    intended_use: str | None = Field(default=None, max_length=MAX_CARD_TEXT_CHARS)
    limitations: str | None = Field(default=None, max_length=MAX_CARD_TEXT_CHARS)
    training_data: str | None = Field(default=None, max_length=MAX_CARD_TEXT_CHARS)
    evaluation_data: str | None = Field(default=None, max_length=MAX_CARD_TEXT_CHARS)
    metrics: list[Metric] = Field(default_factory=list, max_length=MAX_METRICS)
    # Hugging Face metadata the manifest does not already hold
    language: list[Language] = Field(default_factory=list, max_length=MAX_LANGUAGES)
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    library_name: str | None = Field(default=None, min_length=1, max_length=MAX_SHORT_TEXT_CHARS)
    # Mitchell et al. (and EU AI Act Annex XI 1(a)-(d))
    details: ModelDetails | None = None
    primary_users: list[Line] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    out_of_scope_uses: list[Item] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    intended_tasks: list[Item] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    acceptable_use_policy: Text | None = None
    factors: Factors | None = None
    quantitative_analyses: Text | None = None
    ethical_considerations: Text | None = None
    caveats_and_recommendations: Text | None = None
    # EU AI Act Annex XI 2(b)-(e)
    training: TrainingDetails | None = None
    compute: Compute | None = None
    energy: Energy | None = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if k in ORIGINAL_FIELDS or (v is not None and v != [])}

    @field_validator("details", "factors", "training", "compute", "energy")
    @classmethod
    def _no_empty_section(cls, section: _Section | None) -> _Section | None:
        """A section given with nothing in it is the same card as one without it (and serialises the same)."""
        return None if section is None or _empty(section) else section


RECOMMENDED: tuple[str, ...] = (
    "description",
    "details.developers",
    "details.model_type",
    "details.architecture",
    "intended_use",
    "primary_users",
    "out_of_scope_uses",
    "intended_tasks",
    "factors",
    "metrics",
    "evaluation_data",
    "training_data",
    "training.methodology",
    "ethical_considerations",
    "caveats_and_recommendations",
    "limitations",
    "compute",
    "energy",
)
"""The fields a complete card fills in, in the order of the card (``card_gaps`` lists those left empty)."""

_SECTIONS: dict[str, type[BaseModel]] = {
    "details": ModelDetails,
    "factors": Factors,
    "training": TrainingDetails,
    "compute": Compute,
    "energy": Energy,
}


def card_fields() -> list[str]:
    """Every dotted field name a policy may require: the card's fields and each section's own fields."""
    names: list[str] = []
    for name in Card.model_fields:
        names.append(name)
        section = _SECTIONS.get(name)
        if section is not None:
            names.extend(f"{name}.{sub}" for sub in section.model_fields)
    return names


def _value_at(card: Card, path: str) -> Any:
    value: Any = card
    for part in path.split("."):
        if value is None:
            return None
        value = getattr(value, part)
    return value


def card_gaps(card: Card) -> list[str]:
    """The recommended fields left empty, by their manifest path (``card.limitations``), in the card's order."""
    return [f"card.{path}" for path in RECOMMENDED if _empty(_value_at(card, path))]


def card_required_problems(card: Card, required: tuple[str, ...]) -> list[str]:
    """One problem per field the operator's gate policy requires (``card.required``) that the card leaves empty.

    ``required`` holds dotted field names (``intended_use``, ``details.developers``, ``energy``), with or without
    the ``card.`` prefix; a name that is no card field is the policy's mistake: ``InvalidInput`` naming it.
    """
    known = card_fields()
    paths = [name.removeprefix("card.") for name in required]
    unknown = [name for name, path in zip(required, paths, strict=True) if path not in known]
    if unknown:
        raise InvalidInput(
            f"card.required: {', '.join(repr(n) for n in unknown)} is not a card field (fields: {', '.join(known)})"
        )
    return [f"card.{path}: required by the operator's gate policy" for path in paths if _empty(_value_at(card, path))]
