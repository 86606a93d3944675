"""The Celery application: queues by priority, routing, and the beat schedule in code.

`celery -A mailproxy worker` consumes every queue (a free worker takes the highest
priority first); `celery -A mailproxy beat` rings the dispatcher every
GMP_SEND_INTERVAL_SECONDS. Tasks carry ids only: the database is the truth, a lost or
repeated task message costs nothing but a little delay.
"""

from __future__ import annotations

import os
import signal

from celery import Celery
from celery.signals import worker_process_init
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailproxy.settings")

# Send queues by priority (SPEC §5.1), then the queues of the other periodic work.
SEND_QUEUES = ("immediate", "high", "medium", "low")
OTHER_QUEUES = ("reports", "imap", "maintenance")

app = Celery("mailproxy")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Each queue its own direct exchange and routing key: a task sent to one queue lands in
# that queue only (with Celery's defaults every queue would share the default binding).
app.conf.task_queues = [Queue(name, Exchange(name, type="direct"), routing_key=name)
                        for name in (*SEND_QUEUES, *OTHER_QUEUES)]
app.conf.task_default_queue = "medium"
app.conf.task_routes = {
    "queueing.dispatch": {"queue": "immediate"},
    "queueing.heartbeat": {"queue": "immediate"},
    "delivery.report_tenant": {"queue": "reports"},
    "delivery.report_sweep": {"queue": "reports"},
    "queueing.cleanup": {"queue": "maintenance"},
    "delivery.cleanup_files": {"queue": "maintenance"},
    "bounces.poll": {"queue": "imap"},
    "pec.poll": {"queue": "imap"},
    "pec.timeouts": {"queue": "maintenance"},
}
app.autodiscover_tasks()

# Beat's heartbeat for /ready goes every sweep interval, but not more often than this.
BEAT_MIN_INTERVAL = 5.0


def beat_interval() -> float:
    """How often beat records its heartbeat, in seconds."""
    from django.conf import settings

    return max(float(settings.GMP_SEND_INTERVAL_SECONDS), BEAT_MIN_INTERVAL)


@app.on_after_finalize.connect
def _schedule(sender: Celery, **kwargs: object) -> None:
    from django.conf import settings

    sender.add_periodic_task(settings.GMP_SEND_INTERVAL_SECONDS, sender.signature("queueing.dispatch"),
                             name="dispatch sweep")
    sender.add_periodic_task(1.0, sender.signature("delivery.report_sweep"), name="report sweep")
    # For /ready: on the first queue, so a fleet busy sending still takes it within moments.
    sender.add_periodic_task(beat_interval(), sender.signature("queueing.heartbeat"), name="beat heartbeat")
    sender.add_periodic_task(settings.GMP_CLEANUP_INTERVAL_SECONDS, sender.signature("queueing.cleanup"),
                             name="retention cleanup")
    sender.add_periodic_task(settings.GMP_CLEANUP_INTERVAL_SECONDS, sender.signature("delivery.cleanup_files"),
                             name="expired large files")
    # Each mailbox has its own interval (checked against its cursor); these only look often enough.
    sender.add_periodic_task(10.0, sender.signature("bounces.poll"), name="bounce mailboxes")
    sender.add_periodic_task(10.0, sender.signature("pec.poll"), name="PEC mailboxes")
    sender.add_periodic_task(60.0, sender.signature("pec.timeouts"), name="PEC timeouts")


@worker_process_init.connect
def _pool_child_ignores_sigterm(**kwargs: object) -> None:
    """A SIGTERM to the whole process group (systemd's default, `kill -- -PGID`) must not cut
    a pool child mid-transaction: the main process, which gets it too, runs the warm
    shutdown and lets the child finish its task; the hard time limit still ends a stuck one.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
