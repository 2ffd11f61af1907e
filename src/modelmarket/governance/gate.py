"""The publish gate: a package becomes a published version only through these stages, each stored with its result,
duration and report (``governance/model.py``):

validate -> store -> scan -> smoke_test -> benchmark -> bias -> review -> publish

``submit`` runs validate and store (synchronously: a package that is refused leaves nothing behind but content-
addressed blobs), ``run`` the rest up to review. Review is a person's decision (``approve``/``reject``) unless the
operator's policy says ``review: auto``. A failed stage stops the submission with its report; it never reaches
the catalogue. Every decision is audited.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from modelmarket.audit import chain as audit
from modelmarket.core.clock import Clock
from modelmarket.core.errors import Conflict, DomainError, InvalidInput, NotFound, PermissionDenied
from modelmarket.core.ids import new_id
from modelmarket.core.uow import Lock, UnitOfWorkFactory
from modelmarket.governance.model import ACTIVE_STATUSES, StageRecord, Submission
from modelmarket.governance.policy import GatePolicy
from modelmarket.governance.ports import GateUnitOfWork, Trial, TrialRunner
from modelmarket.governance.scan import scan_artifacts
from modelmarket.governance.trials import benchmark, predict_labels, smoke_test
from modelmarket.registry.card import card_gaps, card_required_problems
from modelmarket.registry.catalogue import ArtifactRecord, VersionRecord
from modelmarket.registry.manifest import Manifest, parse_manifest
from modelmarket.registry.ports import BlobStore
from modelmarket.registry.service import RegistryService

Progress = Callable[[str, StageRecord | None], None]
"""Told ``(stage, None)`` when a stage starts and ``(stage, record)`` when it ends."""
MAX_REASON_CHARS = 1_000
MAX_MESSAGE_CHARS = 500
"""Longest provider-controlled text (a model's error) kept in a stage's summary or report."""
log = logging.getLogger(__name__)
LIST_LIMIT_MAX = 1_000


@dataclass
class _Outcome:
    passed: bool
    summary: str
    report: dict[str, Any]
    skipped: bool = False


class GateService:
    def __init__(
        self,
        uow: UnitOfWorkFactory[GateUnitOfWork],
        registry: RegistryService,
        blobs: BlobStore,
        trials: TrialRunner,
        policy: GatePolicy,
        clock: Clock,
    ) -> None:
        self.uow = uow
        self.registry = registry
        self.blobs = blobs
        self.trials = trials
        self.policy = policy
        self.clock = clock

    # -- submit: validate and store ------------------------------------------------------------------------
    def submit(
        self, package_dir: Path, *, actor: str, account_id: str | None = None, progress: Progress | None = None
    ) -> Submission:
        """Validate and store the package in ``package_dir``; record a submission (status ``running``).

        ``account_id``: the provider account submitting over HTTP; the manifest's ``provider`` must be that
        account (``PermissionDenied`` otherwise). None for the operator's CLI. ``InvalidInput`` (naming the field)
        for a package that is refused; ``Conflict`` when ``name@version`` is published with other content or has a
        submission still under way, or when the provider has too many under way. Submitting what is
        already published, byte for byte, returns its published submission (nothing runs again).
        The package folder may be removed once this returns: later stages read the stored artifacts.
        """
        tell = progress or _quiet
        tell("validate", None)
        started, t0 = self.clock(), time.monotonic()
        prepared = self.registry.prepare(package_dir, account_id)
        manifest = prepared.manifest
        problems = card_required_problems(manifest.card, self.policy.card.required)
        if manifest.evaluation is None and manifest.task in self.policy.bias.required_for:
            problems.append(
                f"evaluation: required for {manifest.task} models by the operator's gate policy: declare a "
                "labelled evaluation set with its sensitive features (see docs/bias.md)"
            )
        if problems:
            raise InvalidInput(f"{package_dir}: " + "; ".join(problems))
        gaps = card_gaps(manifest.card)
        size = sum(a.size_bytes for a in prepared.artifacts)
        validate = self._record(
            "validate",
            started,
            t0,
            _Outcome(
                True,
                f"manifest valid, {len(prepared.artifacts)} artifact(s), {size:,} bytes"
                + (f"; card gaps: {', '.join(gaps)}" if gaps else ""),
                {"artifacts": len(prepared.artifacts), "bytes": size, "card_gaps": gaps},
            ),
        )
        existing = self._existing(manifest, prepared.digest, prepared.provider_id, prepared.existing is not None)
        if existing is not None:
            tell("validate", validate)
            return existing
        tell("validate", validate)
        with self.uow.read() as uow:  # refused before any blob is written (checked again under the lock below)
            self._check_free(uow, manifest.name, manifest.version, prepared.provider_id)
        tell("store", None)
        started, t0 = self.clock(), time.monotonic()
        self.registry.store(prepared)
        store = self._record(
            "store",
            started,
            t0,
            _Outcome(
                True,
                f"{len(prepared.artifacts)} artifact(s) stored by sha256",
                {"sha256": {a.path: a.sha256 for a in prepared.artifacts}},
            ),
        )
        now = self.clock().isoformat()
        submission = Submission(
            id=new_id("sub_"),
            model_name=manifest.name,
            version=manifest.version,
            digest=prepared.digest,
            provider_account_id=prepared.provider_id,
            submitted_by=actor,
            status="running",
            manifest_json=json.dumps(manifest.to_json(), sort_keys=True),
            artifacts_json=json.dumps([[a.path, a.sha256, a.size_bytes] for a in prepared.artifacts]),
            created_at=now,
            updated_at=now,
            stages=(validate, store),
        )
        with self.uow.write(Lock.PUBLISH, manifest.name) as uow:
            self._check_free(uow, manifest.name, manifest.version, prepared.provider_id)
            uow.gate.add(submission)
            audit.append(
                uow.audit,
                actor=actor,
                action="submission.created",
                subject=submission.ref,
                payload={"submission": submission.id, "digest": submission.digest},
                now=self.clock(),
            )
        tell("store", store)
        return submission

    def _existing(self, manifest: Manifest, digest: str, provider_id: str, published: bool) -> Submission | None:
        """The published submission of these exact bytes when ``name@version`` is already published (``prepare``
        refused other bytes already); a record is made for a version published before the gate existed."""
        if not published:
            return None
        with self.uow.write(Lock.PUBLISH, manifest.name) as uow:
            found = uow.gate.latest_for(manifest.name, manifest.version)
            if found is not None and found.status == "published" and found.digest == digest:
                return found
            stored = uow.registry.version(manifest.name, manifest.version)
            now = self.clock().isoformat()
            record = StageRecord("publish", "passed", now, 0, "already published (unchanged)", {})
            submission = Submission(
                id=new_id("sub_"),
                model_name=manifest.name,
                version=manifest.version,
                digest=digest,
                provider_account_id=provider_id,
                submitted_by="platform",
                status="published",
                manifest_json=json.dumps(manifest.to_json(), sort_keys=True),
                artifacts_json="[]",
                created_at=now,
                updated_at=now,
                version_id=None if stored is None else stored.id,
                stages=(record,),
            )
            uow.gate.add(submission)
            audit.append(
                uow.audit,
                actor="gate",
                action="submission.already_published",
                subject=submission.ref,
                payload={"submission": submission.id, "digest": digest},
                now=self.clock(),
            )
            return submission

    def _check_free(self, uow: GateUnitOfWork, name: str, version: str, provider_id: str) -> None:
        """``name@version`` is neither published nor under way, and the provider may start another submission."""
        if uow.registry.version(name, version) is not None:
            raise Conflict(f"{name}@{version} was published meanwhile: versions are immutable, bump the version")
        current = uow.gate.latest_for(name, version)
        if current is not None and current.status in ACTIVE_STATUSES:
            raise Conflict(
                f"{name}@{version} has a submission under way ({current.status}): wait for its decision (an operator "
                "can stop it with `modelmarket reviews reject`)"
            )
        active = uow.gate.count_active(provider_id)
        allowed = self.policy.max_active_per_provider
        if active >= allowed:
            raise Conflict(
                f"this provider has {active} submissions running or pending review; the gate's policy allows "
                f"{allowed} at once (max_active_per_provider): wait for a decision"
            )

    # -- run: scan, smoke test, benchmark, bias, review ----------------------------------------------------
    def run(self, submission_id: str, progress: Progress | None = None) -> Submission:
        """Run the stages after store: scan, smoke_test, benchmark, bias, review (and publish when review is
        auto). Returns the submission as it ends: ``failed``, ``pending_review`` or ``published``.

        Whatever goes wrong ends the submission: an unexpected error is stored as a failed ``error`` stage (the
        submission is then ``failed``, its ``name@version`` free again), an interruption (Ctrl-C) as a failed
        ``interrupted`` stage before it propagates."""
        tell = progress or _quiet
        submission = self._get(submission_id)
        if submission.status != "running":
            return submission
        try:
            return self._run(submission, tell)
        except Exception as exc:
            log.exception("the gate run of %s failed", submission.id)
            self._end(submission, "error", f"{type(exc).__name__}: {bounded(str(exc))}", tell)
            return self._get(submission.id)
        except BaseException:
            self._end(submission, "interrupted", "the gate run was interrupted: submit it again", tell)
            raise

    def _run(self, submission: Submission, tell: Progress) -> Submission:
        version = self._candidate(submission)
        deadline = time.monotonic() + self.policy.max_run_s
        if not self._run_stage("scan", version, None, submission, tell):
            return self._get(submission.id)
        with ExitStack() as stack:
            trial: Trial | None = None
            if version.needs_runner:
                tell("smoke_test", None)
                started, t0 = self.clock(), time.monotonic()
                try:
                    trial = _Bounded(stack.enter_context(self.trials.open(version)), deadline, self.policy.max_run_s)
                except DomainError as exc:
                    outcome = _Outcome(
                        False, f"failed: the model did not start in its sandbox: {bounded(exc.message)}", {}
                    )
                    record = self._record("smoke_test", started, t0, outcome)
                    self._save_stage(submission, record, failed=True)
                    tell("smoke_test", record)
                    return self._get(submission.id)
                if not self._run_stage("smoke_test", version, trial, submission, tell, started, t0, announce=False):
                    return self._get(submission.id)
            elif not self._run_stage("smoke_test", version, None, submission, tell):
                return self._get(submission.id)
            for stage in ("benchmark", "bias"):
                if not self._run_stage(stage, version, trial, submission, tell):
                    return self._get(submission.id)
        return self._review(submission, tell)

    def _end(self, submission: Submission, stage: str, summary: str, tell: Progress) -> None:
        """Store a failed ``stage`` and end the submission, if it is still running (best effort: never raises)."""
        record = StageRecord(stage, "failed", self.clock().isoformat(), 0, summary, {})
        try:
            self._save_stage(submission, record, failed=True)
        except Exception:
            log.exception("could not record the end of submission %s", submission.id)
        tell(stage, record)

    def _run_stage(
        self,
        stage: str,
        version: VersionRecord,
        trial: Trial | None,
        submission: Submission,
        tell: Progress,
        started: Any = None,
        t0: float | None = None,
        *,
        announce: bool = True,
    ) -> bool:
        """Run one stage and store its record; False when it failed or the submission was ended meanwhile (by an
        operator, or a gateway restart): the run then stops."""
        if announce:
            tell(stage, None)
        if started is None or t0 is None:
            started, t0 = self.clock(), time.monotonic()
        outcome = self._stage(stage, version, trial)
        record = self._record(stage, started, t0, outcome)
        ok = self._save_stage(submission, record, failed=not outcome.passed)
        tell(stage, record)
        return ok

    def _stage(self, stage: str, version: VersionRecord, trial: Trial | None) -> _Outcome:
        try:
            if stage == "scan":
                passed, summary, report = scan_artifacts(version.artifacts, self.blobs.path, self.policy.scan)
                return _Outcome(passed, summary, report)
            if trial is None:
                return self._without_runner(stage, version)
            if stage == "smoke_test":
                return _Outcome(*smoke_test(trial, version, self._blob_of(version)))
            if stage == "benchmark":
                passed, summary, report = benchmark(trial, version, self._blob_of(version), self.policy.benchmark)
                return _Outcome(passed, summary, report, skipped=bool(report.get("skipped")))
            return self._bias(version, trial)
        except DomainError as exc:
            message = bounded(exc.message)
            return _Outcome(False, f"failed: {message}", {"error": message})

    def _without_runner(self, stage: str, version: VersionRecord) -> _Outcome:
        if stage == "bias" and version.manifest.task in self.policy.bias.required_for:
            return _Outcome(
                False,
                f"failed: the gate's policy requires a bias evaluation for {version.manifest.task} models, and this "
                "one has no runner of ours to evaluate",
                {},
            )
        why = (
            "a pipeline: its steps are published models, each gated when it was published"
            if version.is_pipeline
            else "served by an upstream provider: no runner of ours to test"
        )
        return _Outcome(True, f"skipped: {why}", {"skipped": True}, skipped=True)

    def _bias(self, version: VersionRecord, trial: Trial) -> _Outcome:
        from modelmarket.governance.bias import evaluate_bias, read_evaluation_set

        decl = version.manifest.evaluation
        if decl is None:
            return _Outcome(True, "skipped: the package declares no evaluation set", {"skipped": True}, skipped=True)
        data = read_evaluation_set(self._blob_of(version)(decl.dataset), decl, self.policy.bias.max_rows)
        rows = data.features.tolist()
        predicted = predict_labels(trial, version, decl, rows)
        report = evaluate_bias(data.labels, predicted, data.groups, decl.positive_label, self.policy.bias)
        return _Outcome(report.passed, report.summary(), report.to_json())

    # -- review and publish --------------------------------------------------------------------------------
    def _review(self, submission: Submission, tell: Progress) -> Submission:
        if self.policy.review == "auto":
            return self._decide(submission.id, "approved", "policy", "review: auto in the gate's policy", None, tell)
        started = self.clock()
        record = StageRecord("review", "waiting", started.isoformat(), 0, "waiting for an operator's decision", {})
        with self.uow.write(Lock.PUBLISH, submission.model_name) as uow:
            if not uow.gate.update(
                submission.id, status="pending_review", updated_at=started.isoformat(), expected=("running",)
            ):
                return self._get(submission.id)  # ended meanwhile (rolled back: nothing written)
            uow.gate.add_stage(submission.id, record)
            audit.append(
                uow.audit,
                actor="gate",
                action="submission.pending_review",
                subject=submission.ref,
                payload={"submission": submission.id},
                now=started,
            )
        tell("review", record)
        return self._get(submission.id)

    def approve(
        self, ref: str, *, actor: str, reason: str, by_account_id: str | None = None, progress: Progress | None = None
    ) -> Submission:
        """Approve the submission pending review (``ref``: ``name@version`` or a submission id) and publish it.
        ``by_account_id``: the deciding account (an operator that is not the model's provider); None for the
        operator's CLI. Audited."""
        submission, by = self._deciding(ref, reason, by_account_id, ("pending_review",))
        return self._decide(submission.id, "approved", actor, reason, by, progress or _quiet)

    def reject(self, ref: str, *, actor: str, reason: str, by_account_id: str | None = None) -> Submission:
        """Reject a submission pending review, or stop one still running (a run stuck or unwanted: its stages
        stop at the next one). Audited; its ``name@version`` is free again."""
        submission, by = self._deciding(ref, reason, by_account_id, ("pending_review", "running"))
        return self._decide(submission.id, "rejected", actor, reason, by, _quiet)

    def _deciding(
        self, ref: str, reason: str, by_account_id: str | None, allowed: tuple[str, ...]
    ) -> tuple[Submission, str | None]:
        """The submission to decide, and who decides (``name (id)`` of the operator account, if given)."""
        if not reason.strip():
            raise InvalidInput("reason: give the reason for the decision (--reason)")
        if len(reason) > MAX_REASON_CHARS:
            raise InvalidInput(f"reason: at most {MAX_REASON_CHARS} characters")
        submission = self.show(ref)
        if submission.status not in allowed:
            raise Conflict(f"{submission.ref} ({submission.id}) is {submission.status}, not pending review")
        if by_account_id is not None:
            if by_account_id == submission.provider_account_id:
                raise PermissionDenied("a provider cannot approve or reject its own model")
            with self.uow.read() as uow:
                account = uow.accounts.by_id(by_account_id)
            if account is None or account.role != "operator":
                raise PermissionDenied("only an operator may decide a review")
            return submission, f"{account.name} ({account.id})"
        return submission, None

    def _decide(
        self,
        submission_id: str,
        decision: Literal["approved", "rejected"],
        actor: str,
        reason: str,
        by: str | None,
        tell: Progress,
    ) -> Submission:
        """The review's decision; an approval publishes in the same transaction, so no decision can land between
        the two. A publish that is refused (the version published meanwhile with other bytes) is stored as a
        failed ``publish`` stage after the approval."""
        current = self._get(submission_id)
        decided_by = by or actor
        now = self.clock()
        review = StageRecord(
            "review", decision, now.isoformat(), 0, f"{decision} by {decided_by}: {reason}", {"by": decided_by}
        )
        decided = _Decision(current, review, actor, decided_by, reason, now)
        if decision == "rejected":
            with self.uow.write(Lock.PUBLISH, current.model_name) as uow:
                if not self._store_decision(uow, decided, "rejected"):
                    raise Conflict(f"submission {submission_id} was decided meanwhile")
            tell("review", review)
            return self._get(submission_id)
        tell("publish", None)
        evaluation = self._evaluation_of(current)
        t0 = time.monotonic()
        try:
            with self.uow.write(Lock.PUBLISH, current.model_name) as uow:
                if not self._store_decision(uow, decided, "published"):
                    raise Conflict(f"submission {submission_id} was decided meanwhile")
                result = self.registry.record(
                    parse_manifest(json.loads(current.manifest_json), f"submission {submission_id}"),
                    _artifacts(current),
                    current.digest,
                    current.provider_account_id,
                    f"gate:{decided_by}",
                    evaluation,
                    uow=uow,
                )
                if not result.created:
                    raise Conflict(f"{current.ref} was published meanwhile (submission {submission_id} not used)")
                record = self._record("publish", now, t0, _Outcome(True, f"published as {result.version.id}", {}))
                uow.gate.add_stage(submission_id, record)
                uow.gate.update(
                    submission_id, status="published", updated_at=now.isoformat(), version_id=result.version.id
                )
        except Conflict as exc:
            if "decided meanwhile" in exc.message:
                raise
            record = self._record("publish", now, t0, _Outcome(False, f"failed: {bounded(exc.message)}", {}))
            with self.uow.write(Lock.PUBLISH, current.model_name) as uow:
                if self._store_decision(uow, decided, "failed"):
                    uow.gate.add_stage(submission_id, record)
        tell("review", review)  # told once the decision is committed (with the publish, or its failure)
        tell("publish", record)
        return self._get(submission_id)

    def _store_decision(self, uow: GateUnitOfWork, decided: _Decision, status: str) -> bool:
        """Move the submission from running or pending review to ``status`` with the review stage and the audit
        record of the decision; False (nothing written) when it was decided meanwhile."""
        sub = decided.submission
        if not uow.gate.update(
            sub.id,
            status=status,
            updated_at=decided.now.isoformat(),
            decided_by=decided.decided_by,
            decision_reason=decided.reason,
            expected=("running", "pending_review"),
        ):
            return False
        uow.gate.add_stage(sub.id, decided.review)
        audit.append(
            uow.audit,
            actor=decided.actor,
            action=f"submission.{decided.review.status}",
            subject=sub.ref,
            payload={"submission": sub.id, "by": decided.decided_by, "reason": decided.reason},
            now=decided.now,
        )
        return True

    def _evaluation_of(self, submission: Submission) -> dict[str, Any]:
        """What the version keeps of the gate: the benchmark and bias figures, the smoke test's summary."""
        fresh = self._get(submission.id)
        out: dict[str, Any] = {"submission": submission.id}
        for stage in ("smoke_test", "benchmark", "bias"):
            record = fresh.stage(stage)
            if record is None or record.status != "passed" or record.report.get("skipped"):
                continue
            out[stage] = {"summary": record.summary} if stage == "smoke_test" else record.report
        return out

    def fail_interrupted(self, submitted_by_prefix: str) -> list[str]:
        """Mark the submissions of ``submitted_by_prefix`` (``account:``: uploads, which only a gateway runs) that
        are still ``running`` as failed: the gateway that ran them stopped. Their ``name@version`` is free again.
        Called when a gateway starts; returns their ids."""
        with self.uow.read() as uow:
            running = uow.gate.running(submitted_by_prefix)
        for sub in running:
            self._end(sub, "interrupted", "the gateway stopped during the gate: submit it again", _quiet)
        return [sub.id for sub in running]

    # -- reads ---------------------------------------------------------------------------------------------
    def show(self, ref: str, account_id: str | None = None) -> Submission:
        """The submission (``name@version``: its newest; or an id) with its stages. With ``account_id`` (a
        provider over HTTP), only its own: ``NotFound`` otherwise."""
        with self.uow.read() as uow:
            if "@" in ref:
                name, _, version = ref.partition("@")
                found = uow.gate.latest_for(name, version)
            else:
                found = uow.gate.get(ref)
        if found is None or (account_id is not None and found.provider_account_id != account_id):
            raise NotFound(f"no submission {ref!r}")
        return found

    def list(
        self, statuses: tuple[str, ...] = (), provider_account_id: str | None = None, limit: int = 100
    ) -> list[Submission]:
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise InvalidInput(f"limit must be between 1 and {LIST_LIMIT_MAX}, got {limit}")
        with self.uow.read() as uow:
            return uow.gate.list(statuses, provider_account_id, limit)

    # -- helpers -------------------------------------------------------------------------------------------
    def _get(self, submission_id: str) -> Submission:
        with self.uow.read() as uow:
            found = uow.gate.get(submission_id)
        if found is None:
            raise NotFound(f"no submission {submission_id!r}")
        return found

    def _candidate(self, submission: Submission) -> VersionRecord:
        """The submission as the version it would become (its id is the submission's: runner folders, cgroups)."""
        return VersionRecord(
            id=submission.id,
            model_name=submission.model_name,
            version=submission.version,
            digest=submission.digest,
            manifest=parse_manifest(json.loads(submission.manifest_json), f"submission {submission.id}"),
            provider_account_id=submission.provider_account_id,
            artifacts=_artifacts(submission),
            created_at=submission.created_at,
        )

    def _blob_of(self, version: VersionRecord) -> Callable[[str], Path]:
        by_path = {a.path: a.sha256 for a in version.artifacts}

        def blob_of(path: str) -> Path:
            sha = by_path.get(path)
            if sha is None:
                raise InvalidInput(f"{path}: not among the stored artifacts")
            return self.blobs.path(sha)

        return blob_of

    def _record(self, stage: str, started: Any, t0: float, outcome: _Outcome) -> StageRecord:
        status = "skipped" if outcome.skipped else ("passed" if outcome.passed else "failed")
        return StageRecord(
            stage=stage,
            status=status,  # type: ignore[arg-type]
            started_at=started.isoformat(),
            duration_ms=int((time.monotonic() - t0) * 1000),
            summary=outcome.summary,
            report=outcome.report,
        )

    def _save_stage(self, submission: Submission, record: StageRecord, *, failed: bool) -> bool:
        """Store the stage of a running submission; a failed one ends it (audited). False when the submission
        stops here: the stage failed, or the submission is no longer running (nothing is written then)."""
        now = self.clock()
        with self.uow.write(Lock.PUBLISH, submission.model_name) as uow:
            status = "failed" if failed else "running"
            if not uow.gate.update(submission.id, status=status, updated_at=now.isoformat(), expected=("running",)):
                return False
            uow.gate.add_stage(submission.id, record)
            if failed:
                audit.append(
                    uow.audit,
                    actor="gate",
                    action="submission.failed",
                    subject=submission.ref,
                    payload={"submission": submission.id, "stage": record.stage, "summary": record.summary[:500]},
                    now=now,
                )
        return not failed


@dataclass(frozen=True, slots=True)
class _Decision:
    submission: Submission
    review: StageRecord
    actor: str
    decided_by: str
    reason: str
    now: datetime


class _Bounded:
    """A trial whose calls stop once the gate run's deadline (``max_run_s``) has passed."""

    def __init__(self, trial: Trial, deadline: float, max_run_s: float) -> None:
        self._trial = trial
        self._deadline = deadline
        self._max_run_s = max_run_s
        self.profile = trial.profile

    def infer(self, request: dict[str, Any], binary: bytes = b"") -> dict[str, Any]:
        if time.monotonic() > self._deadline:
            raise DomainError(f"the gate run took longer than its limit of {self._max_run_s:g}s (policy max_run_s)")
        return self._trial.infer(request, binary)

    def rss_bytes(self) -> int | None:
        return self._trial.rss_bytes()


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Provider-controlled text (a model's error message) cut to ``limit`` characters for stored summaries."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit:,} more characters)"


def _artifacts(submission: Submission) -> tuple[ArtifactRecord, ...]:
    return tuple(ArtifactRecord(p, s, n) for p, s, n in json.loads(submission.artifacts_json))


def _quiet(stage: str, record: StageRecord | None) -> None:
    return None
