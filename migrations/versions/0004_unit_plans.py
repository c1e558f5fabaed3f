"""work units: ``plan`` and ``artifact`` columns, so ``checkpoint`` is only a checkpoint;
datastores without a model (``model_path`` NULL: methods that read only the text)

Before, an artifact plan's units sat in consecutive ``checkpoint`` slots (the plan's first
slot and the artifact's name in the payload) and an extend unit's ``checkpoint`` counted
the requests. Units in flight are carried over: an artifact unit's plan is its old first
slot and its artifact the payload's; a finish unit's plan its old checkpoint; an extend
unit's plan its old request count.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 05:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

OLD_KEY = ("datastore_id", "kind", "checkpoint", "start")
NEW_KEY = ("datastore_id", "kind", "plan", "artifact", "checkpoint", "start")
# the name PostgreSQL gave the old, unnamed constraint; SQLite's gets one from this convention
OLD_NAME = "work_units_datastore_id_kind_checkpoint_start_key"
CONVENTION = {"uq": "%(table_name)s_%(column_0_N_name)s_key"}

units = sa.table(
    "work_units",
    sa.column("id", sa.Integer),
    sa.column("datastore_id", sa.String),
    sa.column("kind", sa.String),
    sa.column("checkpoint", sa.Integer),
    sa.column("plan", sa.Integer),
    sa.column("artifact", sa.String),
    sa.column("payload", sa.JSON),
)


def _rows(bind, kinds: tuple[str, ...]):
    return bind.execute(
        sa.select(units.c.id, units.c.checkpoint, units.c.plan, units.c.artifact, units.c.payload)
        .where(units.c.kind.in_(kinds))
        .order_by(units.c.datastore_id, units.c.id)
    ).all()


def upgrade() -> None:
    with op.batch_alter_table("datastores") as batch:
        batch.alter_column("model_path", existing_type=sa.Text(), nullable=True)
    with op.batch_alter_table("work_units", naming_convention=CONVENTION) as batch:
        batch.add_column(sa.Column("plan", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("artifact", sa.String(64), nullable=False, server_default=""))
        batch.drop_constraint(OLD_NAME, type_="unique")
    bind = op.get_bind()
    for unit_id, checkpoint, _, _, payload in _rows(bind, ("artifact", "finish", "extend")):
        payload = dict(payload or {})
        values: dict = {"checkpoint": 0, "plan": checkpoint}
        if "plan" in payload:  # artifact and finish units
            values["plan"] = int(payload.pop("plan"))
            values["artifact"] = str(payload.pop("artifact", ""))
            values["payload"] = payload
        bind.execute(sa.update(units).where(units.c.id == unit_id).values(**values))
    with op.batch_alter_table("work_units") as batch:
        batch.create_unique_constraint("uq_work_unit", list(NEW_KEY))


def downgrade() -> None:
    with op.batch_alter_table("work_units") as batch:
        batch.drop_constraint("uq_work_unit", type_="unique")
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(units.c.id, units.c.datastore_id, units.c.plan, units.c.artifact, units.c.payload)
        .where(units.c.kind.in_(("artifact", "finish")))
        .order_by(units.c.datastore_id, units.c.plan, units.c.id)
    ).all()
    # a store's plans laid out in slots that do not overlap, each from its number on
    firsts: dict[tuple[str, int], int] = {}
    ends: dict[str, int] = {}
    for unit_id, store, plan, artifact, payload in rows:
        payload = dict(payload or {})
        names = list(payload.get("artifacts", []))
        if (store, plan) not in firsts:
            firsts[store, plan] = max(plan, ends.get(store, 0))
            ends[store] = firsts[store, plan] + len(names)
        first = firsts[store, plan]
        payload["plan"] = first
        slot = first
        if artifact:
            payload["artifact"] = artifact
            slot = first + names.index(artifact)
        bind.execute(
            sa.update(units).where(units.c.id == unit_id).values(checkpoint=slot, payload=payload)
        )
    for unit_id, _, plan, _, _ in _rows(bind, ("extend",)):
        bind.execute(sa.update(units).where(units.c.id == unit_id).values(checkpoint=plan))
    with op.batch_alter_table("work_units") as batch:
        batch.drop_column("artifact")
        batch.drop_column("plan")
        batch.create_unique_constraint(OLD_NAME, list(OLD_KEY))
    op.execute("UPDATE datastores SET model_path = '' WHERE model_path IS NULL")
    with op.batch_alter_table("datastores") as batch:
        batch.alter_column("model_path", existing_type=sa.Text(), nullable=False)
