"""The publish gate: a package becomes a published version only through these stages, each stored with its result,
duration and report (``governance/model.py``):

validate -> store -> scan -> smoke_test -> benchmark -> bias -> review -> publish

``submit`` runs validate and store (synchronously: a package that is refused leaves nothing behind), ``run`` the
rest up to review. Review is a person's decision (``approve``/``reject``) unless the operator's policy says
``review: auto``. A failed stage stops the submission with its report; it never reaches the catalogue.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from modelmarket.governance.model import StageRecord, Submission

Progress = Callable[[str, StageRecord | None], None]
"""Told ``(stage, None)`` when a stage starts and ``(stage, record)`` when it ends."""


class GateService:
    def submit(self, package_dir: Path, *, actor: str, account_id: str | None = None) -> Submission:
        """Validate and store the package in ``package_dir``; record a submission (status ``running``).

        ``account_id``: the provider account submitting over HTTP; the manifest's ``provider`` must be that
        account (``PermissionDenied`` otherwise). None for the operator's CLI. ``InvalidInput`` (naming the field)
        for a package that is refused; ``Conflict`` when ``name@version`` is published with other content or has a
        submission still under way; ``LimitExceeded`` when the provider has too many under way.
        The package folder may be removed once this returns: later stages read the stored artifacts.
        """
        raise NotImplementedError

    def run(self, submission_id: str, progress: Progress | None = None) -> Submission:
        """Run the stages after store: scan, smoke_test, benchmark, bias, review (and publish when review is auto).
        Returns the submission as it ends: ``failed``, ``pending_review`` or ``published``."""
        raise NotImplementedError

    def approve(self, ref: str, *, actor: str, reason: str, by_account_id: str | None = None) -> Submission:
        """Approve the submission pending review (``ref``: ``name@version`` or a submission id) and publish it.
        ``by_account_id``: the deciding account (an operator that is not the model's provider); None for the
        operator's CLI. Audited."""
        raise NotImplementedError

    def reject(self, ref: str, *, actor: str, reason: str, by_account_id: str | None = None) -> Submission:
        """Reject the submission pending review. Audited."""
        raise NotImplementedError

    def show(self, ref: str, account_id: str | None = None) -> Submission:
        """The submission (``name@version``: its newest; or an id) with its stages. With ``account_id`` (a
        provider over HTTP), only its own: ``NotFound`` otherwise."""
        raise NotImplementedError

    def list(self, statuses: tuple[str, ...] = (), provider_account_id: str | None = None, limit: int = 100) -> list[Submission]:
        raise NotImplementedError
