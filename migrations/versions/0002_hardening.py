"""hardening: build warnings, request ids, verification state, worker heartbeats

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 08:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datastores") as batch:
        batch.add_column(
            sa.Column("warnings", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
        batch.add_column(sa.Column("request_id", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("verified_fingerprint", sa.String(length=64), nullable=True))
    with op.batch_alter_table("work_units") as batch:
        batch.add_column(sa.Column("request_id", sa.String(length=128), nullable=True))
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("current_unit_id", sa.Integer(), nullable=True),
        sa.Column("units_completed", sa.Integer(), nullable=False),
        sa.Column("units_failed", sa.Integer(), nullable=False),
        sa.Column("examples_featurized", sa.BigInteger(), nullable=False),
        sa.Column("busy_seconds", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_workers_last_heartbeat_at"), "workers", ["last_heartbeat_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_workers_last_heartbeat_at"), table_name="workers")
    op.drop_table("workers")
    with op.batch_alter_table("work_units") as batch:
        batch.drop_column("request_id")
    with op.batch_alter_table("datastores") as batch:
        batch.drop_column("verified_fingerprint")
        batch.drop_column("verified_at")
        batch.drop_column("request_id")
        batch.drop_column("warnings")
