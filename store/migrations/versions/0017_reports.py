"""reports: radiology reports from the PACS (Text SR, Encapsulated PDF) and the RIS (HL7)

Revision ID: 0017
Revises: 0016

``reports`` holds one row per report as received: the study it belongs to (by Study
Instance UID; "" while an HL7 report waits for its study, matched by accession), its
status (preliminary, final, corrected), where it came from (dicom, hl7), what it is (pdf,
text, sr) and where its body lies in the content store (never in the database). An HL7
report keeps its raw message in the content store (``raw_path``) exactly as long as the
row. ``report_deliveries`` records which report went out with which request, so that a
correction after delivery becomes a new package part and an email (issue 13).
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("accession_number", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("reported_at_text", sa.String(length=40), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=True),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("body_path", sa.String(length=300), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column("body_size", sa.BigInteger(), nullable=False),
        sa.Column("raw_path", sa.String(length=300), nullable=True),
        sa.Column("hl7_control_id", sa.String(length=200), nullable=True),
        sa.Column("supersedes_id", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "status IN ('preliminary', 'final', 'corrected')", name="ck_reports_status"
        ),
        sa.CheckConstraint("source IN ('dicom', 'hl7')", name="ck_reports_source"),
        sa.CheckConstraint("kind IN ('pdf', 'text', 'sr')", name="ck_reports_kind"),
        sa.ForeignKeyConstraint(["instance_id"], ["instances.id"]),
        sa.ForeignKeyConstraint(["supersedes_id"], ["reports.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in (
        "study_instance_uid",
        "accession_number",
        "received_at",
        "instance_id",
        "sop_instance_uid",
        "hl7_control_id",
    ):
        op.create_index(op.f(f"ix_reports_{column}"), "reports", [column], unique=False)
    op.create_table(
        "report_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("package_id", sa.Integer(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["report_id"], ["reports.id"]),
        sa.ForeignKeyConstraint(["request_id"], ["release_requests.id"]),
        sa.ForeignKeyConstraint(["package_id"], ["packages.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("report_id", "request_id", name="uq_report_deliveries"),
    )
    for column in ("report_id", "request_id"):
        op.create_index(
            op.f(f"ix_report_deliveries_{column}"), "report_deliveries", [column], unique=False
        )


def downgrade() -> None:
    for column in ("report_id", "request_id"):
        op.drop_index(op.f(f"ix_report_deliveries_{column}"), table_name="report_deliveries")
    op.drop_table("report_deliveries")
    for column in (
        "study_instance_uid",
        "accession_number",
        "received_at",
        "instance_id",
        "sop_instance_uid",
        "hl7_control_id",
    ):
        op.drop_index(op.f(f"ix_reports_{column}"), table_name="reports")
    op.drop_table("reports")
