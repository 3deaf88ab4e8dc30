"""identity: patient identity checks (issue 14.1)

Revision ID: 0011
Revises: 0010

A study joins a request only when its patient identity agrees with the request's
(``release.identity``). Requests get an optional Issuer of Patient ID
(``release_requests.patient_issuer``); a study held because its identity disagrees is
recorded in ``identity_mismatches`` (which fields, never the values), one row per
request and study, until staff attach it anyway or dismiss it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("release_requests") as batch:
        batch.add_column(
            sa.Column("patient_issuer", sa.String(length=64), nullable=False, server_default="")
        )
    op.create_table(
        "identity_mismatches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("fields", sa.String(length=64), nullable=False),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("found_at", sa.DateTime(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(), nullable=True),
        sa.Column("resolved_by", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["request_id"], ["release_requests.id"]),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id", "study_id"),
    )
    for column in ("request_id", "study_id", "state"):
        op.create_index(op.f(f"ix_identity_mismatches_{column}"), "identity_mismatches", [column])


def downgrade() -> None:
    for column in ("request_id", "study_id", "state"):
        op.drop_index(op.f(f"ix_identity_mismatches_{column}"), table_name="identity_mismatches")
    op.drop_table("identity_mismatches")
    with op.batch_alter_table("release_requests") as batch:
        batch.drop_column("patient_issuer")
