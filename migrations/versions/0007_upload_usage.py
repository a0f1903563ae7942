"""upload_usage: the bytes each upload counts against its owner's daily limits, kept when the video goes

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

"""
from datetime import datetime, timedelta, timezone

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'upload_usage',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('video_id', sa.String(length=36), nullable=False),
        sa.Column('bytes', sa.BigInteger(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('upload_usage') as batch_op:
        batch_op.create_index('ix_upload_usage_video_id', ['video_id'], unique=False)
        batch_op.create_index('ix_upload_usage_user_id_created_at', ['user_id', 'created_at'], unique=False)
    # The last day's uploads, as the limits counted them until now (from the videos).
    since = datetime.now(timezone.utc) - timedelta(days=1)
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":  # its times are stored without a zone, in UTC
        since = since.replace(tzinfo=None)
    bind.execute(
        sa.text(
            "INSERT INTO upload_usage (user_id, video_id, bytes, created_at)"
            " SELECT user_id, id, COALESCE(size_bytes, 0), created_at FROM videos WHERE created_at > :since"
        ),
        {"since": since},
    )


def downgrade():
    op.drop_table('upload_usage')
