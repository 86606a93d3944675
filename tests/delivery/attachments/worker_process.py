"""Fetch one attachment URL in a process of its own, as a second worker would (the cross-process cache test).

Prints "ready" once Django is set up, fetches when a line arrives on stdin, then prints the
MD5 of the bytes it got. The cache folder comes from GMP_CACHE_DIR in the environment.
"""

from __future__ import annotations

import hashlib
import sys

import django


def main() -> None:
    django.setup()
    from delivery.attachments import fetch_attachments
    from tenants.models import Tenant

    print("ready", flush=True)
    sys.stdin.readline()
    [attachment] = fetch_attachments([{"filename": "shared.bin", "storage_path": sys.argv[1]}],
                                     tenant=Tenant(id=sys.argv[2]))
    print(hashlib.md5(attachment.content, usedforsecurity=False).hexdigest(), flush=True)


if __name__ == "__main__":
    main()
