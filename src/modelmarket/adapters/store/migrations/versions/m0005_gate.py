"""The publish gate: submissions and their stages; what the gate measured, kept on the published version.

- ``submissions``: a package on its way to the catalogue (manifest, stored artifacts, status, decision).
- ``submission_stages``: each stage's status, start, duration, one-line summary and JSON report.
- ``model_versions.evaluation_json``: the gate's figures (benchmark, bias) of a version published through it.

Revision ID: m0005
Revises: m0004
"""

import sqlalchemy as sa
from alembic import op

revision = "m0005"
down_revision = "m0004"
branch_labels = None
depends_on = None

_TS = sa.String(40)


def upgrade() -> None:
    op.add_column("model_versions", sa.Column("evaluation_json", sa.Text, nullable=True))
    op.create_table(
        "submissions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("provider_account_id", sa.String(40), nullable=False),
        sa.Column("submitted_by", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("manifest_json", sa.Text, nullable=False),
        sa.Column("artifacts_json", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("decision_reason", sa.Text, nullable=True),
        sa.Column("version_id", sa.String(40), nullable=True),
    )
    op.create_index("ix_submissions_ref", "submissions", ["model_name", "version", "created_at"])
    op.create_index("ix_submissions_provider", "submissions", ["provider_account_id", "status"])
    op.create_table(
        "submission_stages",
        sa.Column("submission_id", sa.String(40), sa.ForeignKey("submissions.id"), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("stage", sa.String(40), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("duration_ms", sa.BigInteger, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("report_json", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("submission_stages")
    op.drop_index("ix_submissions_provider", table_name="submissions")
    op.drop_index("ix_submissions_ref", table_name="submissions")
    op.drop_table("submissions")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("evaluation_json")
