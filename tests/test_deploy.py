"""The deployment files against the code they run: Dockerfile, docker-compose.yml, the dashboard.

No Docker engine is needed: the files are parsed and checked against the settings, the
Celery app and the product's start-up checks; `docker-compose config` validates the
compose file when the binary is installed (.ci/run installs it).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import settings
from django.http.request import validate_host

from mailproxy.celery import app as celery_app
from tenants.models import SmtpAccount

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
APP_SERVICES = ("web", "worker", "beat")
REQUIRED_SECRETS = ("POSTGRES_PASSWORD", "GMP_API_TOKEN", "MAIL_PROXY_ENCRYPTION_KEY", "DJANGO_SECRET_KEY")
HEALTH_URL = "http://127.0.0.1:8000/health"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def option(args: list[str], *names: str) -> str:
    for index, arg in enumerate(args):
        if arg in names:
            return args[index + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
    raise AssertionError(f"none of {names} in {args}")


def seconds(duration: str) -> float:
    """A compose duration ("150s", "2m30s", "1h") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    assert "".join(f"{n}{u}" for n, u in parts) == duration, duration
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 0.000001}
    return sum(float(number) * scale[unit] for number, unit in parts)


def settings_variables() -> set[str]:
    """Every environment variable mailproxy/settings.py reads (and NAME_FILE for secrets)."""
    source = (ROOT / "mailproxy" / "settings.py").read_text(encoding="utf-8")
    names = set(re.findall(r"\benv_(?:str|int|float|bool|list|int_list)\(\s*\"([A-Z0-9_]+)\"", source))
    names |= set(re.findall(r"os\.environ\.get\(\s*\"([A-Z0-9_]+)\"", source))
    secrets = set(re.findall(r"\benv_secret\(\s*\"([A-Z0-9_]+)\"", source))
    return names | secrets | {f"{name}_FILE" for name in secrets}


def example_variables() -> set[str]:
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))


# -- docker-compose.yml --------------------------------------------------------------------


def test_compose_has_the_services_of_the_spec(compose: dict[str, Any]) -> None:
    assert {"postgres", "redis", "web", "worker", "beat", "mailpit"} <= set(services(compose))
    assert "version" not in compose  # the compose specification needs none
    assert services(compose)["mailpit"]["profiles"] == ["try"]
    for name in ("postgres", "redis", "web", "worker", "beat"):
        assert "profiles" not in services(compose)[name], name  # `docker compose up` starts them


def test_app_services_run_the_image_built_here(compose: dict[str, Any]) -> None:
    images = set()
    for name in APP_SERVICES:
        service = services(compose)[name]
        assert service["build"] == ".", name
        assert service.get("init") is True, name  # an init as PID 1 forwards SIGTERM and reaps children
        images.add(service["image"])
    assert len(images) == 1  # one image, each service by its command


def test_web_migrates_then_execs_gunicorn_on_all_interfaces(compose: dict[str, Any]) -> None:
    args = argv(services(compose)["web"])
    assert args[:2] == ["sh", "-c"]
    script = args[2]
    migrate, gunicorn = script.index("python manage.py migrate --noinput"), script.index("exec gunicorn")
    assert migrate < gunicorn
    assert "&&" in script[migrate:gunicorn]  # a failed migration does not start the server
    server = shlex.split(script[gunicorn:])
    assert server[1:3] == ["gunicorn", "mailproxy.wsgi:application"]
    assert option(server, "--bind", "-b") == "0.0.0.0:8000"
    # Several gunicorn workers would each answer /metrics with their own HTTP counters.
    assert option(server, "--workers", "-w") == "1" or "PROMETHEUS_MULTIPROC_DIR" in services(compose)["web"][
        "environment"]
    # Docker's SIGKILL must not come before gunicorn's own graceful timeout.
    assert seconds(services(compose)["web"]["stop_grace_period"]) > float(option(server, "--graceful-timeout"))


def test_worker_consumes_every_queue_of_the_celery_app_in_priority_order(compose: dict[str, Any]) -> None:
    args = argv(services(compose)["worker"])
    assert args[:4] == ["celery", "-A", "mailproxy", "worker"]
    queues = [queue.name for queue in celery_app.conf.task_queues]
    # The order is the priority: Redis' queue_order_strategy "priority" polls in -Q order.
    assert option(args, "-Q", "--queues").split(",") == queues
    assert {"immediate", "high", "medium", "low"} <= set(queues)
    assert "%h" in option(args, "-n", "--hostname")  # replicas of --scale get distinct names
    assert "--without-gossip" in args
    assert "--without-mingle" in args


def test_worker_grace_period_covers_a_batch_and_its_last_transaction(compose: dict[str, Any]) -> None:
    default_timeout = SmtpAccount._meta.get_field("timeout").default
    grace = seconds(services(compose)["worker"]["stop_grace_period"])
    assert grace >= settings.GMP_BATCH_SECONDS + 2 * default_timeout
    assert grace < settings.CELERY_TASK_TIME_LIMIT  # the hard limit would not be the one to end it


def test_beat_keeps_its_schedule_in_a_volume(compose: dict[str, Any]) -> None:
    beat = services(compose)["beat"]
    args = argv(beat)
    assert args[:4] == ["celery", "-A", "mailproxy", "beat"]
    schedule = option(args, "-s", "--schedule")
    targets = [volume.split(":")[1] for volume in beat["volumes"]]
    assert any(schedule.startswith(f"{target}/") for target in targets)  # kept across restarts
    assert "deploy" not in beat or beat["deploy"].get("replicas", 1) == 1  # exactly one beat


def test_only_web_and_mailpit_publish_ports_and_no_container_names(compose: dict[str, Any]) -> None:
    published = {name for name, service in services(compose).items() if service.get("ports")}
    assert published == {"web", "mailpit"}
    assert services(compose)["web"]["ports"] == ["8000:8000"]
    for name, service in services(compose).items():
        assert "container_name" not in service, name  # would break --scale worker=N
        assert "hostname" not in service, name


def test_redis_refuses_writes_instead_of_evicting(compose: dict[str, Any]) -> None:
    redis = services(compose)["redis"]
    assert redis["image"].split(":")[0] == "redis"
    assert redis["image"].split(":")[1].startswith("7")
    args = argv(redis)
    assert option(args, "--maxmemory-policy") == "noeviction"
    assert option(args, "--appendonly") == "yes"
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_postgres_keeps_its_data_in_the_named_volume(compose: dict[str, Any]) -> None:
    postgres = services(compose)["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "pgdata:/var/lib/postgresql/data" in postgres["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_named_volumes_are_declared_and_used(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    assert {"pgdata", "cache", "data"} <= declared
    used = {volume.split(":")[0] for service in services(compose).values() for volume in service.get("volumes", [])}
    assert used == declared
    worker = services(compose)["worker"]
    cache_dir = worker["environment"]["GMP_CACHE_DIR"]
    assert f"cache:{cache_dir}" in worker["volumes"]


def test_app_services_start_after_healthy_dependencies(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        depends = services(compose)[name]["depends_on"]
        assert "redis" in depends, name
        assert all(entry["condition"] == "service_healthy" for entry in depends.values()), name
    assert {"postgres", "redis"} <= set(services(compose)["web"]["depends_on"])
    # Workers and beat wait for web's migrations.
    assert "web" in services(compose)["worker"]["depends_on"]
    assert "web" in services(compose)["beat"]["depends_on"]


def test_every_variable_compose_sets_is_read_by_the_settings(compose: dict[str, Any]) -> None:
    known = settings_variables()
    assert {"DATABASE_URL", "REDIS_URL", "GMP_API_TOKEN", "GMP_CACHE_DIR"} <= known  # the parser works
    documented = example_variables()
    for name in APP_SERVICES:
        environment = services(compose)[name]["environment"]
        assert isinstance(environment, dict), name
        assert set(environment) <= known, (name, set(environment) - known)
        assert set(environment) <= documented, (name, set(environment) - documented)
        for variable in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "GMP_API_TOKEN",
                         "MAIL_PROXY_ENCRYPTION_KEY", "DJANGO_SECRET_KEY"):
            assert variable in environment, (name, variable)
        assert environment["DATABASE_URL"].startswith("postgresql://")  # not the embedded SQLite
        assert "@postgres:5432/" in environment["DATABASE_URL"]
        assert environment["REDIS_URL"].startswith("redis://redis:6379/")
        assert "DEBUG" not in environment  # DEBUG would relax the secret checks


def test_secrets_are_required_never_defaulted() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for name in REQUIRED_SECRETS:
        uses = re.findall(r"\$\{" + name + r"(:?[-?])?([^}]*)\}", text)
        assert uses, name
        for operator, message in uses:
            assert operator == ":?", (name, operator)  # empty or unset: a clear error, no fallback
            assert name in message, name


def test_app_services_have_health_checks_that_fit_them(compose: dict[str, Any]) -> None:
    web = services(compose)["web"]["healthcheck"]["test"]
    assert web[0] == "CMD"
    assert web[1:3] == ["python", "-c"]
    assert HEALTH_URL in web[3]
    worker = " ".join(services(compose)["worker"]["healthcheck"]["test"])
    assert "inspect ping" in worker
    assert "worker@$$HOSTNAME" in worker  # the name -n worker@%h gives this replica
    assert services(compose)["beat"]["healthcheck"] == {"disable": True}  # nothing listens in beat


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed (.ci/run installs it)")
def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    empty_env_file = tmp_path / "empty.env"  # a developer's .env must not decide the outcome
    empty_env_file.write_text("")
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    secrets = {name: f"dummy-{name.lower()}" for name in REQUIRED_SECRETS}
    command = ["docker-compose", "--env-file", str(empty_env_file), "-f", str(COMPOSE_FILE), "config"]
    result = subprocess.run([*command, "-q"], cwd=ROOT, env={**base, **secrets}, capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""  # no warnings either
    resolved = yaml.safe_load(subprocess.run(command, cwd=ROOT, env={**base, **secrets}, capture_output=True,
                                             text=True, check=True, timeout=60).stdout)
    url = resolved["services"]["worker"]["environment"]["DATABASE_URL"]
    assert url == "postgresql://mailproxy:dummy-postgres_password@postgres:5432/mailproxy"
    for missing in REQUIRED_SECRETS:
        env = {**base, **{name: value for name, value in secrets.items() if name != missing}}
        result = subprocess.run([*command, "-q"], cwd=ROOT, env=env, capture_output=True, text=True, check=False,
                                timeout=60)
        assert result.returncode != 0, missing
        assert f"set {missing} in .env" in result.stderr, result.stderr


# -- the secrets and the production checks ---------------------------------------------------


def production_check(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`manage.py check` as web runs it in compose: PostgreSQL URL, DEBUG off, no test settings."""
    clean = {key: value for key, value in os.environ.items()
             if key not in (*REQUIRED_SECRETS, "DEBUG", "DJANGO_SETTINGS_MODULE", "MAIL_PROXY_ENCRYPTION_OLD_KEYS")}
    clean.update({"DJANGO_SETTINGS_MODULE": "mailproxy.settings", "GMP_DATA_DIR": str(tmp_path / "data"),
                  "DATABASE_URL": "postgresql://mailproxy:pw@127.0.0.1:9/mailproxy",  # never connected to
                  "REDIS_URL": "redis://127.0.0.1:9/0", **env})
    return subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=clean, capture_output=True,
                          text=True, check=False, timeout=120)


def test_secrets_from_make_env_pass_the_production_checks(tmp_path: Path) -> None:
    target = tmp_path / ".env"
    subprocess.run(["sh", str(ROOT / "deploy" / "make-env.sh"), str(target)], check=True, capture_output=True,
                   timeout=30)
    assert target.stat().st_mode & 0o077 == 0  # private to its owner
    values = dict(re.findall(r"^([A-Z_]+)=(.+)$", target.read_text(), flags=re.MULTILINE))
    assert set(values) == set(REQUIRED_SECRETS)
    result = production_check({k: v for k, v in values.items() if k != "POSTGRES_PASSWORD"}, tmp_path)
    assert result.returncode == 0, result.stderr
    again = subprocess.run(["sh", str(ROOT / "deploy" / "make-env.sh"), str(target)], capture_output=True,
                           text=True, check=False, timeout=30)
    assert again.returncode != 0  # never overwrites secrets already in use
    assert "already sets" in again.stderr


def test_sample_secrets_are_refused_in_production(tmp_path: Path) -> None:
    result = production_check({"GMP_API_TOKEN": "change-me", "DJANGO_SECRET_KEY": "change-me",
                               "MAIL_PROXY_ENCRYPTION_KEY": "change-me"}, tmp_path)
    assert result.returncode != 0
    for check_id in ("mailproxy.E001", "mailproxy.E003", "mailproxy.E004"):
        assert check_id in result.stderr, result.stderr


# -- Dockerfile --------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending
    return instructions


def last(instruction: str) -> str:
    found = [rest for keyword, rest in dockerfile() if keyword == instruction]
    assert found, instruction
    return found[-1]


def test_dockerfile_base_user_volume_and_port() -> None:
    assert dockerfile()[0] == ("FROM", "python:3.11-slim")
    user = last("USER")
    assert user == "mailproxy"  # not root
    build = " ".join(rest for keyword, rest in dockerfile() if keyword == "RUN")
    assert re.search(r"useradd [^&]*--uid 10001 [^&]*\bmailproxy\b", build)
    assert re.search(r"install -d -o mailproxy -g mailproxy -m 0750 /data\b", build)  # the volume's owner
    assert "pip install -r requirements/base.txt" in build
    keywords = [keyword for keyword, _ in dockerfile()]
    assert keywords.index("USER") < keywords.index("CMD")
    assert "GMP_DATA_DIR=/data" in [rest for keyword, rest in dockerfile() if keyword == "ENV"]
    assert last("EXPOSE") == "8000"
    assert last("VOLUME") == "/data"
    assert last("STOPSIGNAL") == "SIGTERM"


def test_dockerfile_default_command_is_the_embedded_instance_on_all_interfaces() -> None:
    all_interfaces = "0.0.0.0"  # noqa: S104 (inside a container: reachable through the published port)
    assert json.loads(last("CMD")) == ["python", "manage.py", "serve", "--host", all_interfaces, "--port", "8000"]


def test_dockerfile_collects_static_files_without_baking_secrets_into_the_image() -> None:
    collect = next(rest for keyword, rest in dockerfile() if keyword == "RUN" and "collectstatic" in rest)
    # Without these the embedded settings would generate a secret key, an encryption key and
    # an admin token into /data at build time, the same for every container of the image.
    for name in ("DJANGO_SECRET_KEY=", "MAIL_PROXY_ENCRYPTION_KEY=", "GMP_API_TOKEN="):
        assert name in collect
    assert "GMP_DATA_DIR=/tmp/build-data" in collect
    assert "rm -rf /tmp/build-data" in collect
    # Into the image, not the /data volume (a volume would keep an old version's files).
    assert "GMP_STATIC_ROOT=/app/static" in [rest for keyword, rest in dockerfile() if keyword == "ENV"]
    assert "GMP_STATIC_ROOT" in (ROOT / "mailproxy" / "settings.py").read_text(encoding="utf-8")


def test_the_embedded_broker_keeps_its_exchange_tables_in_the_data_folder() -> None:
    # kombu's default is ./control in the working directory (/app in the image, owned by root).
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    if not settings.CELERY_BROKER_URL.startswith("filesystem"):
        pytest.skip("the server run uses Redis as the broker")
    assert str(options["control_folder"]).startswith(str(settings.DATA_DIR))


def test_dockerignore_keeps_tests_and_local_state_out_of_the_image() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "var", "tests", ".env", "**/__pycache__", "control"} <= ignored


def healthcheck_code() -> str:
    args = last("HEALTHCHECK")
    options, _, command = args.partition("CMD ")
    assert "--interval=" in options
    assert "--start-period=" in options
    parsed = json.loads(command)
    assert parsed[:2] == ["python", "-c"]
    assert "curl" not in command
    return str(parsed[2])


class HealthServer:
    """A stand-in for the web process: 200 on /health, 503 elsewhere; records the Host headers."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        hosts = self.hosts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hosts.append(self.headers["Host"])
                self.send_response(200 if self.path == "/health" else 503)
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def health_server() -> Iterator[HealthServer]:
    server = HealthServer()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def run_healthcheck(url: str, allowed_hosts: str | None = None) -> int:
    env = {key: value for key, value in os.environ.items() if key != "ALLOWED_HOSTS"}
    if allowed_hosts is not None:
        env["ALLOWED_HOSTS"] = allowed_hosts
    return subprocess.run([sys.executable, "-c", healthcheck_code().replace(HEALTH_URL, url)], env=env,
                          capture_output=True, check=False, timeout=30).returncode


def test_image_healthcheck_succeeds_on_health_and_fails_otherwise(health_server: HealthServer) -> None:
    assert HEALTH_URL in healthcheck_code()
    assert run_healthcheck(f"{health_server.url}/health") == 0
    assert run_healthcheck(f"{health_server.url}/ready-not-here") != 0
    port = int(health_server.url.rsplit(":", 1)[1])
    assert run_healthcheck(f"http://127.0.0.1:{port ^ 1}/health") != 0  # most likely nothing listens there


@pytest.mark.parametrize(("allowed_hosts", "host"), [
    (None, "127.0.0.1"),
    ("*", "127.0.0.1"),
    ("mail.example.com", "mail.example.com"),
    ("*, mail.example.com,localhost", "mail.example.com"),
    (".example.com", "example.com"),
])
def test_image_healthcheck_sends_a_host_django_accepts(health_server: HealthServer, allowed_hosts: str | None,
                                                        host: str) -> None:
    assert run_healthcheck(f"{health_server.url}/health", allowed_hosts) == 0
    assert health_server.hosts == [host]
    allowed = [h.strip() for h in (allowed_hosts or "*").split(",") if h.strip()]
    assert validate_host(host, allowed)  # what Django does before answering anything but 400


def test_compose_web_healthcheck_is_the_images(compose: dict[str, Any]) -> None:
    assert services(compose)["web"]["healthcheck"]["test"][3] == healthcheck_code()


# -- Grafana dashboard -------------------------------------------------------------------------

DASHBOARD_METRICS = (
    "gmp_sent_total", "gmp_errors_total", "gmp_deferred_total", "gmp_rate_limited_total", "gmp_bounces_total",
    "gmp_pending_messages", "gmp_queue_seconds_bucket", "gmp_smtp_seconds_bucket", "gmp_report_lag_seconds_bucket",
    "gmp_report_failures_total", "gmp_oldest_pending_seconds",
    "django_http_requests_total_by_view_transport_method_total",
    "django_http_requests_latency_seconds_by_view_method_bucket",
)


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_grafana_dashboard_charts_every_metric() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text(encoding="utf-8"))
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["tenant"]["query"]["query"] == "label_values(gmp_sent_total, tenant_id)"
    expressions = []
    for panel in dashboard_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            expressions.append(target["expr"])
    text = "\n".join(expressions)
    for metric in DASHBOARD_METRICS:
        assert re.search(rf"\b{metric}\b", text), metric
    for histogram in ("gmp_queue_seconds", "gmp_smtp_seconds", "gmp_report_lag_seconds"):
        for quantile in ("0.5", "0.95"):
            assert f"histogram_quantile({quantile}, sum by (le) (rate({histogram}_bucket[5m])))" in text, histogram
    used = set(re.findall(r"\b(gmp_[a-z_]+)", text))
    assert used <= set(DASHBOARD_METRICS), used - set(DASHBOARD_METRICS)  # no misspelt metric
    for expression in expressions:
        for counter in re.findall(r"\b(\w+_total)\b", expression):
            assert f"rate({counter}" in expression, expression  # counters are charted as rates
        assert re.fullmatch(r"[^\[]*(\[5m\][^\[]*)*", expression), expression  # every range is 5m
    ids = [panel["id"] for panel in dashboard_panels(dashboard)]
    assert len(ids) == len(set(ids))
