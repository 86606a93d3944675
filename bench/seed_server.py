"""Start the seed product (genro-mail-proxy 0.7.0), the one bench/compare.py compares with.

Run by the seed's own virtualenv (bench/.seed-venv), with its source distribution's `sql`,
`storage` and `tools` packages on PYTHONPATH; it cannot import anything of this product.
It serves the seed's FastAPI application with uvicorn, one process, as the seed's
`mail-proxy serve` does, but with the database path and the API token given here (its CLI
takes them from a fixed /data path and its own instance record):

    bench/.seed-venv/bin/python bench/seed_server.py --db /tmp/x/mail.db --port 8001 --token T

`--result-queue`: the seed keeps every delivery outcome in an in-memory queue of 1,000 entries
that nothing in its server reads; once full, each further send waits 5 s to put its outcome
there and then drops it. The benchmark raises that size so it measures the seed's sending, not
that stall (see bench/COMPARE.md).
"""

from __future__ import annotations

import argparse
import logging

import uvicorn
from core.mail_proxy.proxy import MailProxy
from core.mail_proxy.proxy_config import ProxyConfig, QueueConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, help="SQLite file (or postgresql:// URL)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True, help="the admin API token (X-API-Token)")
    parser.add_argument("--result-queue", type=int, default=10_000_000, help="size of the unread outcome queue")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = ProxyConfig(db_path=args.db, api_token=args.token, start_active=True,
                         queue=QueueConfig(result_size=args.result_queue))
    proxy = MailProxy(config=config)
    uvicorn.run(proxy.api, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
