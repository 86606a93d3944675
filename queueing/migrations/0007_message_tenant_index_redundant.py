"""Message.tenant loses its own indexes: message_unique_client_id (tenant, external_id) covers them.

The database side drops the two indexes by name instead of letting AlterField rebuild the
foreign key, which on PostgreSQL would re-validate every row under a lock and on SQLite
would copy the whole table.
"""

import django.db.models.deletion
from django.db import migrations, models

INDEX = "queueing_message_tenant_id_60ef9b7c"


def drop(apps, schema_editor):
    for name in (INDEX, f"{INDEX}_like"):  # the _like one exists on PostgreSQL only
        schema_editor.execute(f'DROP INDEX IF EXISTS "{name}"')


def restore(apps, schema_editor):
    schema_editor.execute(f'CREATE INDEX "{INDEX}" ON "queueing_message" ("tenant_id")')
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f'CREATE INDEX "{INDEX}_like" ON "queueing_message" ("tenant_id" varchar_pattern_ops)')


class Migration(migrations.Migration):

    dependencies = [
        ('queueing', '0006_message_expiring_index'),
        ('tenants', '0003_sync_state'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='message',
                    name='tenant',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                                            related_name='messages', to='tenants.tenant'),
                ),
            ],
            database_operations=[migrations.RunPython(drop, restore)],
        ),
    ]
