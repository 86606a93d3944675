"""Reading a mailbox with its cursor: shared by the bounce and the PEC pollers.

One poller per mailbox at a time (a lease on the cursor row). Each message is handled
by the caller's `handle(raw)`, which commits its own events; only then does the
cursor move past it, and only then is it flagged and moved. A crash in between reads
it again next time, and the handler's de-duplication makes that harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from bounces.imap import Cursor, Mailbox, MailboxError, MailboxSettings
from bounces.models import MailboxCursor

logger = logging.getLogger(__name__)

BATCH = 100


def poll_mailbox(*, key: str, settings: MailboxSettings, interval: int, handle: Callable[[bytes], object],
                 force: bool = False) -> int:
    """Read what is new in one mailbox; the number of messages handled (0: not due, or busy)."""
    now = timezone.now()
    cursor, _ = MailboxCursor.objects.get_or_create(key=key)
    due = Q(last_polled_at__isnull=True) | Q(last_polled_at__lte=now - timedelta(seconds=interval))
    claimed = MailboxCursor.objects.filter(pk=cursor.pk).filter(
        Q(lease_until__isnull=True) | Q(lease_until__lt=now)).filter(Q() if force else due).update(
        lease_until=now + timedelta(seconds=settings.timeout * 4 + 60), last_polled_at=now)
    if not claimed:
        return 0
    handled = 0
    try:
        cursor.refresh_from_db()
        with Mailbox(settings) as mailbox:
            while True:
                fetched, uidvalidity = mailbox.new_messages(
                    Cursor(uidvalidity=cursor.uidvalidity, last_uid=cursor.last_uid), limit=BATCH)
                if uidvalidity != cursor.uidvalidity:
                    logger.warning("mailbox renumbered, rescanning key=%s uidvalidity=%s", key, uidvalidity)
                    cursor.uidvalidity, cursor.last_uid = uidvalidity, 0
                if not fetched:
                    break
                for item in fetched:
                    handle(item.raw)
                    handled += 1
                    cursor.last_uid = max(cursor.last_uid, item.uid)
                    MailboxCursor.objects.filter(pk=cursor.pk).update(uidvalidity=cursor.uidvalidity,
                                                                      last_uid=cursor.last_uid)
                mailbox.mark_processed([item.uid for item in fetched])
                if len(fetched) < BATCH:
                    break
        MailboxCursor.objects.filter(pk=cursor.pk).update(last_error="")
    except MailboxError as exc:
        logger.warning("mailbox poll failed key=%s error=%s", key, exc)
        MailboxCursor.objects.filter(pk=cursor.pk).update(last_error=str(exc)[:1000])
    finally:
        MailboxCursor.objects.filter(pk=cursor.pk).update(lease_until=None)
    return handled
