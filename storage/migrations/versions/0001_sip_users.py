"""sip_users: SIP accounts with HA1 digest credentials per realm

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Create sip_users."""
    op.create_table(
        "sip_users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("extension", sa.String(length=32), nullable=True),
        sa.Column("display_name", sa.String(length=128), server_default="", nullable=False),
        sa.Column("realm", sa.String(length=255), nullable=False),
        sa.Column("ha1_md5", sa.String(length=32), nullable=False),
        sa.Column("ha1_sha256", sa.String(length=64), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sip_users")),
        sa.UniqueConstraint("username", name=op.f("uq_sip_users_username")),
        sa.UniqueConstraint("extension", name=op.f("uq_sip_users_extension")),
    )


def downgrade() -> None:
    """Drop sip_users."""
    op.drop_table("sip_users")
