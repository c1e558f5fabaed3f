"""methods a datastore serves; a payload for work units (methods to add to a ready store)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("datastores", sa.Column("methods", sa.JSON(), nullable=True))
    op.add_column("work_units", sa.Column("payload", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("work_units") as batch:
        batch.drop_column("payload")
    with op.batch_alter_table("datastores") as batch:
        batch.drop_column("methods")
