"""Running a pipeline (a Resonance Node): its steps' models called in dependency order, billed all at once.

Pure orchestration over ``StepCaller``, the port the data plane implements: it calls one step model (resolving,
validating, admitting and running it as for a direct call, but holding its usage back as ``pending``), prices the
pipeline's own fee, and commits or abandons pending usage. Here:

- steps start as soon as the steps they take outputs from are done, so independent steps run concurrently;
- each step gets its inputs renamed to the step model's input names (a pipeline input, or an earlier step's
  output), and the pipeline's outputs are renamed to its declared names, in declared order;
- on success every step's pending usage and the fee (if any) are committed in one ``commit``; if any step fails,
  the steps in flight are let finish, none is started after, everything collected is abandoned (nothing billed)
  and the error names the step.

Request-level ``parameters`` are not forwarded: a step runs its model with the model's own parameters (a pipeline
manifest declares none), and transport parameters (``binary_data_output``) are the edge's business.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelmarket.accounts import Account
from modelmarket.core.errors import DomainError, InvalidInput, InvariantViolated, ensure
from modelmarket.core.tensors import Tensor
from modelmarket.registry.catalogue import VersionRecord
from modelmarket.registry.manifest import Source, StepDecl, parse_source

__all__ = ["PipelineResult", "PipelineStepFailed", "StepCaller", "StepOutcome", "run_pipeline"]


class PipelineStepFailed(DomainError):
    """A pipeline step failed in a way that is not a domain error of its own (an unexpected exception), or its
    model answered without an output the pipeline needs. Answered as a bad gateway (502)."""

    def __init__(self, message: str, *, step: str) -> None:
        super().__init__(message)
        self.step = step


@dataclass(frozen=True, slots=True)
class StepOutcome:
    outputs: dict[str, Tensor]
    """The step model's outputs by name."""
    pending: object
    """Opaque to the executor: the step's usage, not yet billed (handed back to ``commit`` or ``abandon``)."""


class StepCaller(Protocol):
    """What the executor needs from the data plane.

    ``commit`` takes ownership of what it is given: if it raises, it has billed nothing and released it all
    itself (the executor does not call ``abandon`` after a failed ``commit``). ``abandon`` is called at most once
    per pipeline call, with everything collected (possibly nothing), and never after ``commit``.
    """

    def new_call_id(self) -> str: ...

    async def call_step(
        self,
        account: Account,
        key_id: str | None,
        model: str,
        ref: str | None,
        inputs: Sequence[Tensor],
        *,
        pipeline_call_id: str,
    ) -> StepOutcome: ...

    def fee(
        self, account: Account, key_id: str | None, pipeline: VersionRecord, *, pipeline_call_id: str
    ) -> object | None:
        """The pipeline's own fee as pending usage, or None when it charges none."""
        ...

    async def commit(self, pending: Sequence[object]) -> list[str]:
        """Bill all of them in one commit; the ids of the usage events appended, in order."""
        ...

    def abandon(self, pending: Sequence[object]) -> None:
        """Release them; nothing is billed."""
        ...


@dataclass(frozen=True, slots=True)
class PipelineResult:
    call_id: str
    outputs: list[Tensor]
    """The pipeline's outputs, named and ordered as it declares them."""
    steps: list[tuple[str, str]]
    """``(step id, model reference as written)`` for every step, in declared order."""
    event_ids: list[str] = field(default_factory=list)
    """The usage events the call was billed with (each step's, then the pipeline's fee when it has one)."""


async def run_pipeline(
    caller: StepCaller,
    account: Account,
    key_id: str | None,
    version: VersionRecord,
    inputs: Sequence[Tensor],
    parameters: Mapping[str, Any] | None = None,
) -> PipelineResult:
    """Run ``version`` (a pipeline) on ``inputs`` (already checked against ``version.inputs`` by the caller).

    Raises ``InvalidInput`` for a missing pipeline input before any step runs; the error of the first failing
    step (in declared order) with its class kept and its message prefixed ``pipeline step '<id>' (<model>): ``
    for a ``DomainError``; ``PipelineStepFailed`` for anything else or a missing step output. ``parameters`` are
    not forwarded (see the module docstring).
    """
    manifest = version.manifest
    ensure(manifest.steps is not None and manifest.outputs_from is not None, f"{version.ref} is not a pipeline")
    steps: list[StepDecl] = list(manifest.steps or ())
    outputs_from = manifest.outputs_from or {}
    given = _pipeline_inputs(version, inputs)
    call_id = caller.new_call_id()
    run = _Run(caller, account, key_id, call_id, given, _needed_outputs(steps, outputs_from))
    try:
        await asyncio.gather(*(run.step(step) for step in steps))
    except BaseException:  # cancelled: release what the finished steps held, then let the cancellation through
        caller.abandon(run.collected(steps))
        raise
    failed = next((step for step in steps if step.id in run.failures), None)
    if failed is not None:
        caller.abandon(run.collected(steps))
        exc = run.failures[failed.id]
        error = step_error(failed, exc)
        if error is exc:
            raise error
        raise error from exc
    try:
        fee = caller.fee(account, key_id, version, pipeline_call_id=call_id)
    except BaseException:
        caller.abandon(run.collected(steps))
        raise
    event_ids = await caller.commit([*run.collected(steps), *([] if fee is None else [fee])])
    outputs = [_renamed(run.value(parse_source(outputs_from[out.name])), out.name) for out in manifest.outputs]
    return PipelineResult(
        call_id=call_id,
        outputs=outputs,
        steps=[(step.id, step.model) for step in steps],
        event_ids=event_ids,
    )


class _Run:
    """One pipeline call in progress: each step's outcome and pending usage as they arrive, and its failures."""

    def __init__(
        self,
        caller: StepCaller,
        account: Account,
        key_id: str | None,
        call_id: str,
        given: dict[str, Tensor],
        needed: dict[str, set[str]],
    ) -> None:
        self.caller = caller
        self.account = account
        self.key_id = key_id
        self.call_id = call_id
        self.given = given
        self.needed = needed
        self.outcomes: dict[str, StepOutcome] = {}
        self.pending: dict[str, object] = {}
        self.failures: dict[str, BaseException] = {}
        self.done: dict[str, asyncio.Event] = {}

    def _done(self, step_id: str) -> asyncio.Event:
        return self.done.setdefault(step_id, asyncio.Event())

    async def step(self, step: StepDecl) -> None:
        try:
            for dep in step.after:
                await self._done(dep).wait()
            if self.failures:  # a step failed: start nothing more (its dependants could not run anyway)
                return
            inputs = [_renamed(self.value(source), name) for name, source in step.sources.items()]
            outcome = await self.caller.call_step(
                self.account, self.key_id, step.model_name, step.model_ref, inputs, pipeline_call_id=self.call_id
            )
            self.pending[step.id] = outcome.pending
            missing = sorted(self.needed.get(step.id, set()) - outcome.outputs.keys())
            if missing:
                raise PipelineStepFailed(
                    f"{_prefix(step)}the model answered without output(s) {', '.join(missing)} that the pipeline "
                    f"needs (it gave: {', '.join(outcome.outputs) or 'none'})",
                    step=step.id,
                )
            self.outcomes[step.id] = outcome
        except (Exception, asyncio.CancelledError) as exc:
            # Recorded, never raised here, so every step settles before the call is billed or abandoned. A
            # cancellation of the whole call still reaches ``run_pipeline``: gather raises it once all have settled.
            self.failures[step.id] = exc
        finally:
            self._done(step.id).set()

    def value(self, source: Source) -> Tensor:
        if source.step is None:
            return self.given[source.tensor]
        return self.outcomes[source.step].outputs[source.tensor]

    def collected(self, steps: Sequence[StepDecl]) -> list[object]:
        """Pending usage of every step that answered, in declared step order."""
        return [self.pending[step.id] for step in steps if step.id in self.pending]


def _prefix(step: StepDecl) -> str:
    return f"pipeline step {step.id!r} ({step.model}): "


def step_error(step: StepDecl, exc: BaseException) -> BaseException:
    """The error a failed step is answered with: a ``DomainError`` keeps its class (so its status stays: 400 for
    bad input, 502 for a model failure, 429/402 for a limit...) and attributes, with the message prefixed by the
    step; anything else becomes ``PipelineStepFailed``. A broken invariant (a programmer error) passes unchanged."""
    if isinstance(exc, PipelineStepFailed | InvariantViolated):
        return exc
    if isinstance(exc, DomainError):
        message = _prefix(step) + exc.message
        cls = type(exc)
        copy = cls.__new__(cls, message)  # not cls(...): subclasses take extra keyword arguments
        copy.__dict__.update(exc.__dict__)
        copy.message = message
        return copy
    return PipelineStepFailed(f"{_prefix(step)}failed unexpectedly ({type(exc).__name__})", step=step.id)


def _pipeline_inputs(version: VersionRecord, inputs: Sequence[Tensor]) -> dict[str, Tensor]:
    given = {tensor.name: tensor for tensor in inputs}
    missing = [spec.name for spec in version.inputs if spec.name not in given]
    if missing:
        raise InvalidInput(f"model {version.model_name!r} needs input(s) {', '.join(missing)}")
    return given


def _needed_outputs(steps: Sequence[StepDecl], outputs_from: Mapping[str, str]) -> dict[str, set[str]]:
    """For each step id, the names of its model's outputs that later steps or the pipeline's outputs take."""
    needed: dict[str, set[str]] = {}
    sources = [source for step in steps for source in step.sources.values()]
    sources += [parse_source(text) for text in outputs_from.values()]
    for source in sources:
        if source.step is not None:
            needed.setdefault(source.step, set()).add(source.tensor)
    return needed


def _renamed(tensor: Tensor, name: str) -> Tensor:
    """The same data under another name. Tensor parameters are not carried over: they describe how the tensor
    travelled to or from a model (``binary_data_size``), not the data."""
    return Tensor(name=name, datatype=tensor.datatype, shape=list(tensor.shape), data=tensor.data)
