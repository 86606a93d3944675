"""A sender with a deliberately naive rate limit: a counter in its own memory.

Run as ``python -m tests.reliability.naive_sender HOST PORT TAG LIMIT WINDOW SECONDS``: for
SECONDS it sends as fast as its own counter allows (LIMIT per WINDOW seconds), one message
per SMTP transaction. Ten of them at once show what a limit that is not shared does.
"""

from __future__ import annotations

import smtplib
import sys
import time
from email.message import EmailMessage

from tests.reliability.windows import NaiveLimiter


def main(host: str, port: int, tag: str, limit: int, window: float, seconds: float) -> int:
    limiter = NaiveLimiter(limit, window)
    sent = 0
    deadline = time.monotonic() + seconds
    with smtplib.SMTP(host, port, timeout=10) as client:
        while time.monotonic() < deadline:
            if not limiter.acquire():
                time.sleep(0.05)
                continue
            message = EmailMessage()
            message["From"] = "naive@example.com"
            message["To"] = f"{tag}@example.com"
            message["Subject"] = f"{tag} {sent}"
            message["Message-ID"] = f"<{tag}.{sent}@naive.test>"
            message.set_content("x")
            client.send_message(message)
            sent += 1
    return sent


if __name__ == "__main__":
    host, port, tag, limit, window, seconds = sys.argv[1:7]
    main(host, int(port), tag, int(limit), float(window), float(seconds))
