"""Run the embedded all-in-one instance: migrations, the web process, a worker with beat.

What `make run` and the single container use: one command, no server to install. The
worker uses the broker of the settings (kombu's filesystem transport when embedded) and
embeds beat, so mail goes out with nothing else running. Production runs the three
processes apart (README).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Migrate, then serve the API and run a worker with embedded beat until interrupted."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
        parser.add_argument("--no-worker", action="store_true", help="serve the API only")

    def handle(self, *args: Any, **options: Any) -> None:
        # The handlers first: as PID 1 in a container, a signal without one is ignored,
        # and a stop during the migrations would wait for SIGKILL.
        stopping = False

        def stop(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        settings.DATA_DIR.mkdir(parents=True, exist_ok=True)  # beat's schedule lives there
        call_command("migrate", interactive=False, verbosity=0)
        if stopping:
            return
        call_command("welcome", host=options["host"], port=options["port"], stdout=self.stdout)
        self.stdout.flush()  # before the children write to the same output
        python = sys.executable
        processes: list[subprocess.Popen[bytes]] = []
        if not options["no_worker"]:
            schedule = str(settings.DATA_DIR / "celerybeat-schedule")
            processes.append(subprocess.Popen([  # noqa: S603 (our own interpreter and arguments)
                python, "-m", "celery", "-A", "mailproxy", "worker", "--beat", "-s", schedule, "-l", "INFO",
                "-c", str(options["concurrency"]), "-n", "embedded@%h", "--without-gossip", "--without-mingle",
            ], start_new_session=True))
        processes.append(subprocess.Popen([  # noqa: S603
            python, "-m", "gunicorn", "mailproxy.wsgi:application", "--bind", f"{options['host']}:{options['port']}",
            "--workers", "1", "--threads", "8", "--access-logfile", "-",
        ], start_new_session=True))
        # The children have sessions of their own: a Ctrl-C or SIGTERM reaches this process
        # only, which then stops each of them the way it expects (Celery: warm shutdown).
        # One process ending ends the instance: a half-running instance would take mail
        # and never send it, or send and never answer.
        while not stopping and all(process.poll() is None for process in processes):
            time.sleep(0.5)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        # Long enough for a worker to finish its batch and the SMTP transaction in progress.
        grace = settings.GMP_BATCH_SECONDS + 2 * 60 + 10
        deadline = time.monotonic() + grace
        for process in processes:
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
        failed = [process.returncode for process in processes if process.returncode not in (0, -signal.SIGTERM)]
        if failed and not stopping:
            self.stderr.write(f"mail-proxy stopped: a process exited with {failed[0]}")
            os._exit(1)
