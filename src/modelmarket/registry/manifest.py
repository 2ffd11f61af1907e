"""The model package manifest (``modelmarket.yaml``): schema and validation with errors that name the field."""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator

from modelmarket.core.errors import InvalidInput
from modelmarket.core.money import check_currency, parse_decimal
from modelmarket.metering.units import UnitKind
from modelmarket.registry.package import artifact_path_problem, open_package_file

MANIFEST_NAME = "modelmarket.yaml"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MAX_VERSION_COMPONENT = 999_999_999  # MAJOR, MINOR and PATCH each; nine digits fit every integer column
SEMVER_RE = re.compile(r"^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})$")  # <= MAX_VERSION_COMPONENT
_VERSION_SHAPE_RE = re.compile(r"^\d+\.\d+\.\d+$")
MAX_MANIFEST_BYTES = 256 * 1024  # the file is read up to this size and refused beyond it
MAX_YAML_DEPTH = 32  # nesting of mappings and lists
MAX_SHORT_TEXT_CHARS = 100  # task, runtime, provider, tensor and metric names
MAX_LICENSE_CHARS = 200  # an SPDX expression such as "Apache-2.0 WITH LLVM-exception OR MIT"
MAX_SUMMARY_CHARS = 300
MAX_CARD_TEXT_CHARS = 20_000  # each long card section (description, intended use, ...)
MAX_METRICS = 100
MAX_TENSORS = 64  # declared inputs, and outputs
MAX_ARTIFACT_ENTRIES = 1_000
MAX_PARAMETERS = 64
MAX_PARAMETERS_JSON_BYTES = 16 * 1024
_SHOWN_CHARS = 40  # how much of a refused value an error message quotes
# The one way to write a price: digits, optionally a point and more digits. No sign, exponent, '_' or spaces.
PRICE_RE = re.compile(r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"
]
PRICE_MAX_DECIMALS = 10  # bounded precision keeps every stored amount exact and short
PRICE_LIMIT = 10**12
DATATYPES: tuple[str, ...] = get_args(Datatype)
UNIT_KINDS: tuple[str, ...] = tuple(k.value for k in UnitKind)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _shown(value: str) -> str:
    """``repr`` of a refused value, cut short so a message never echoes a whole oversized field."""
    return repr(value) if len(value) <= _SHOWN_CHARS else repr(value[:_SHOWN_CHARS]) + "..."


class TensorDecl(_Strict):
    name: str = Field(min_length=1, max_length=MAX_SHORT_TEXT_CHARS)
    datatype: Datatype
    shape: list[int] = Field(min_length=1, max_length=8)

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int]) -> list[int]:
        for dim in shape:
            if dim == 0 or dim < -1:
                raise ValueError(f"dimension {dim} is invalid: use a positive size or -1 for any size")
        return shape


class ArtifactDecl(_Strict):
    """A file or folder of the package, written in one canonical form (see ``package.artifact_path_problem``)."""

    path: str = Field(min_length=1)

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str) -> str:
        problem = artifact_path_problem(path)
        if problem is not None:
            raise ValueError(problem)
        return path


class Pricing(_Strict):
    unit: UnitKind
    price_per_iu: Decimal
    currency: str

    @field_validator("price_per_iu", mode="before")
    @classmethod
    def _price(cls, value: Any) -> Decimal:
        price = parse_decimal(_price_text(value), "price_per_iu")
        if int(price.as_tuple().exponent) < -PRICE_MAX_DECIMALS:
            raise ValueError(f"at most {PRICE_MAX_DECIMALS} digits after the decimal point")
        if price >= PRICE_LIMIT:
            raise ValueError(f"must be less than {PRICE_LIMIT:,}")
        return price

    @field_validator("currency", mode="before")
    @classmethod
    def _currency(cls, value: Any) -> str:
        try:
            return check_currency(value, "currency")
        except InvalidInput as exc:
            raise ValueError(exc.message.removeprefix("currency: ")) from None

    @field_serializer("price_per_iu", when_used="json")
    def _price_out(self, price: Decimal) -> str:
        return self.price_text

    @property
    def price_text(self) -> str:
        """The price exactly as the provider wrote it (``0.0010``, ``0.0000001``; never ``1E-7``)."""
        return format(self.price_per_iu, "f")


def _price_text(value: Any) -> str:
    """The price's text if it is in the one accepted form; else ``ValueError`` saying how to write it."""
    if isinstance(value, float):
        raise ValueError(f"write the amount as a quoted decimal string, not a float ({value!r})")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be a quoted decimal string such as '0.0010', not {type(value).__name__}")
    if isinstance(value, int) and abs(value) >= PRICE_LIMIT:  # before str(): a huge int has no cheap text
        raise ValueError(f"must be less than {PRICE_LIMIT:,}")
    text = str(value)
    if PRICE_RE.match(text):
        return text
    if text.startswith("-"):
        raise ValueError("must not be negative (write zero as '0', with no sign)")
    try:
        finite = Decimal(text).is_finite()
    except InvalidOperation:
        raise ValueError(f"{_shown(text)} is not a decimal number") from None
    if not finite:
        raise ValueError(f"{_shown(text)} is not a finite number")
    raise ValueError(
        f"{_shown(text)}: write the price in plain decimal digits with at most one point, e.g. '0.0010' or '100':"
        " no sign, exponent ('1E+2'), '_', spaces or leading zeros"
    )


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


class Manifest(_Strict):
    name: str
    version: str
    task: str = Field(min_length=1, max_length=MAX_SHORT_TEXT_CHARS)
    modality: Literal["image", "text", "audio", "tabular"]
    runtime: str = Field(min_length=1, max_length=MAX_SHORT_TEXT_CHARS)
    provider: str = Field(min_length=1, max_length=MAX_SHORT_TEXT_CHARS)
    license: str = Field(min_length=1, max_length=MAX_LICENSE_CHARS)
    artifacts: list[ArtifactDecl] = Field(min_length=1, max_length=MAX_ARTIFACT_ENTRIES)
    parameters: dict[str, Any] = Field(default_factory=dict, max_length=MAX_PARAMETERS)
    inputs: list[TensorDecl] = Field(min_length=1, max_length=MAX_TENSORS)
    outputs: list[TensorDecl] = Field(min_length=1, max_length=MAX_TENSORS)
    pricing: Pricing
    card: Card

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not NAME_RE.match(name):
            raise ValueError("must be lowercase letters, digits and '-', starting with a letter or digit")
        return name

    @field_validator("version")
    @classmethod
    def _version(cls, version: str) -> str:
        if SEMVER_RE.match(version):
            return version
        if _VERSION_SHAPE_RE.match(version) and not any(p != "0" and p.startswith("0") for p in version.split(".")):
            raise ValueError(
                f"{_shown(version)}: MAJOR, MINOR and PATCH must each be at most {MAX_VERSION_COMPONENT:,}"
            )
        raise ValueError(f"{_shown(version)} is not a semantic version MAJOR.MINOR.PATCH (e.g. 1.0.0)")

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(json.dumps(parameters, ensure_ascii=False).encode("utf-8"))
        except (TypeError, ValueError):
            raise ValueError("values must be strings, numbers, booleans, lists or mappings") from None
        if size > MAX_PARAMETERS_JSON_BYTES:
            raise ValueError(f"{size:,} bytes as JSON; the limit is {MAX_PARAMETERS_JSON_BYTES:,}")
        return parameters

    @property
    def semver(self) -> tuple[int, int, int]:
        major, minor, patch = (int(x) for x in self.version.split("."))
        return major, minor, patch

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


def _artifact_overlaps(manifest: Manifest) -> list[str]:
    """Entries that repeat an earlier one, or lie inside (or contain) an earlier folder entry."""
    problems: list[str] = []
    earlier: list[tuple[int, str]] = []
    for index, decl in enumerate(manifest.artifacts):
        for first, path in earlier:
            if decl.path == path:
                why = f"is listed twice (also artifacts[{first}])"
            elif decl.path.startswith(path + "/"):
                why = f"is inside the folder listed as artifacts[{first}] ({_shown(path)})"
            elif path.startswith(decl.path + "/"):
                why = f"is a folder that holds artifacts[{first}] ({_shown(path)})"
            else:
                continue
            problems.append(f"artifacts[{index}].path: {_shown(decl.path)} {why}: list each file or folder once")
            break
        earlier.append((index, decl.path))
    return problems


def parse_manifest(doc: Any, source: str = MANIFEST_NAME) -> Manifest:
    if not isinstance(doc, dict):
        raise InvalidInput(f"{source}: the manifest must be a YAML mapping of fields")
    try:
        manifest = Manifest.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            problems.append(f"{_field_path(tuple(err['loc']))}: {msg}")
        raise InvalidInput(f"{source}: " + "; ".join(problems)) from None
    overlaps = _artifact_overlaps(manifest)
    if overlaps:
        raise InvalidInput(f"{source}: " + "; ".join(overlaps))
    return manifest


class ManifestYamlError(yaml.YAMLError):
    """A YAML construct the manifest refuses (an alias, a duplicate key, deep nesting, an odd integer)."""

    def __init__(self, mark: yaml.Mark | None, message: str) -> None:
        line = f"line {mark.line + 1}: " if mark is not None else ""
        super().__init__(line + message)


_PLAIN_INT_RE = re.compile(r"^(0|-?[1-9][0-9]*)$")  # no "-0": it would read as 0


class ManifestLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with the constructs that make a small file mean something large or surprising refused.

    - anchors and aliases (``&a``/``*a``, and ``<<: *a`` merges): a 2 kB file of nested aliases expands to
      megabytes in memory, and a reader of the file cannot see what a value is without chasing them;
    - a key given twice in one mapping (plain YAML keeps the last one silently);
    - nesting deeper than ``MAX_YAML_DEPTH``;
    - integers in YAML 1.1's other spellings (``0x10``, ``0o17``, ``010`` = 8, ``1_000``, ``1:30`` = 90, ``+5``):
      an integer is written in plain decimal.
    """

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ManifestYamlError(
                event.start_mark, "YAML anchors and aliases (&name, *name) are not allowed: write each value out"
            )
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise ManifestYamlError(event.start_mark, f"nested more than {MAX_YAML_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            is_int = isinstance(value_node, yaml.ScalarNode) and value_node.tag == "tag:yaml.org,2002:int"
            if is_int and not _PLAIN_INT_RE.match(str(value_node.value)):  # name the field, not only the line
                raise ManifestYamlError(
                    value_node.start_mark,
                    f"{key_node.value}: write the number {_shown(str(value_node.value))} in plain decimal digits, "
                    "or quote it as text",
                )
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ManifestYamlError(key_node.start_mark, "merge keys ('<<') are not allowed: write the fields out")
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, list | dict):
                raise ManifestYamlError(key_node.start_mark, "a mapping key must be a plain value")
            if key in seen:
                raise ManifestYamlError(key_node.start_mark, f"key {key!r} is given twice in the same mapping")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_plain_int(self, node: yaml.ScalarNode) -> int:
        text = str(node.value)
        if not _PLAIN_INT_RE.match(text):
            raise ManifestYamlError(
                node.start_mark, f"write the integer {_shown(text)} in plain decimal digits (or quote it as text)"
            )
        return int(text)


ManifestLoader.add_constructor("tag:yaml.org,2002:int", ManifestLoader.construct_plain_int)


def read_manifest_text(path: Path) -> str:
    """The manifest file's text: a regular file (not a link), at most ``MAX_MANIFEST_BYTES``, UTF-8."""
    with open_package_file(path) as fh:
        data = fh.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidInput(f"{path}: larger than the limit of {MAX_MANIFEST_BYTES:,} bytes for a manifest")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text (byte {exc.start} cannot be decoded)") from None


def load_manifest(package_dir: Path) -> Manifest:
    path = package_dir / MANIFEST_NAME
    if not package_dir.is_dir():
        raise InvalidInput(f"{package_dir}: not a directory (expected a model package folder)")
    if not path.is_file() and not path.is_symlink():
        raise InvalidInput(f"{package_dir}: no {MANIFEST_NAME} in the package folder")
    text = read_manifest_text(path)
    try:
        doc = yaml.load(text, Loader=ManifestLoader)
    except ManifestYamlError as exc:
        raise InvalidInput(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: not valid YAML: {exc}") from None
    return parse_manifest(doc, str(path))
