"""Every documented variable is read, documented, refused when malformed, and changes behaviour.

One table names each variable of .env.example: a non-default value, what it changes in the
loaded settings (the wiring, checked in a fresh process) and the test proving the product
then behaves differently (checked to exist and to mention the setting). The table is held
against the source: every variable the settings read is documented and in the table.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.core.checks import Warning as CheckWarning

from mailproxy import env
from mailproxy.checks import check_unknown_variables

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_FILE = ROOT / "mailproxy" / "settings.py"
EXAMPLE_FILE = ROOT / ".env.example"
CLI_FILE = ROOT / "mailproxy" / "cli.py"
PRODUCT_PACKAGES = ("mailproxy", "tenants", "queueing", "delivery", "bounces", "pec")
POSTGRES_URL = "postgresql://mp:pw@db.internal:5432/mail"
KEY = "dGVzdC1rZXktMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY="
BEHAVIOUR = "tests/test_config_behaviour.py"


@dataclass(frozen=True)
class Variable:
    name: str
    value: str  # a value other than the default; "{tmp}" is a temporary folder
    probe: str  # an expression over the loaded settings that the value must change
    proof: str  # the test proving the product behaves differently with another value
    setting: str = ""  # the name the proof uses, when the setting is not named like the variable
    env: dict[str, str] = field(default_factory=dict)  # what else must be set for the variable to matter
    example_is_default: bool = True  # .env.example's value gives the same settings as leaving it unset

    @property
    def mentioned_as(self) -> str:
        return self.setting or self.name


SEND = "tests/delivery/test_send.py"
REPORTS = "tests/delivery/test_reports.py"
FETCHERS = "tests/delivery/attachments/test_fetchers.py"
CACHE = "tests/delivery/attachments/test_cache.py"
BOUNCE_MAILBOX = f"{BEHAVIOUR}::test_instance_wide_bounce_mailbox_is_read_with_its_settings"

TABLE: tuple[Variable, ...] = (
    # Core
    Variable("DATABASE_URL", POSTGRES_URL, "[DATABASES['default']['ENGINE'], DATABASES['default']['HOST'], EMBEDDED]",
             "tests/test_settings.py::test_production_database_without_key_refuses_to_start"),
    Variable("REDIS_URL", "redis://cache.internal:6379/4", "[REDIS_URL, CELERY_BROKER_URL, GMP_RATE_LIMITER]",
             f"{SEND}::test_rate_limiter_unreachable_pauses_limited_accounts_only"),
    Variable("CELERY_BROKER_URL", "redis://broker.internal:6379/5", "CELERY_BROKER_URL",
             f"{BEHAVIOUR}::test_tasks_go_to_the_configured_broker"),
    Variable("GMP_API_TOKEN", "admin-token-of-the-wiring-test-0123456789abcdef", "GMP_API_TOKEN",
             f"{BEHAVIOUR}::test_the_admin_token_is_the_configured_one"),
    Variable("MAIL_PROXY_ENCRYPTION_KEY", KEY, "MAIL_PROXY_ENCRYPTION_KEY",
             "tests/tenants/test_crypto.py::test_wrong_key_fails_with_a_clear_error"),
    Variable("MAIL_PROXY_ENCRYPTION_OLD_KEYS", "b2xkLWtleS1vbmU=,b2xkLWtleS10d28=", "MAIL_PROXY_ENCRYPTION_OLD_KEYS",
             "tests/tenants/test_crypto.py::test_old_key_still_decrypts_after_rotation"),
    Variable("DJANGO_SECRET_KEY", "a-django-secret-key-of-the-wiring-test-0123456789", "SECRET_KEY",
             "tests/test_settings.py::test_check_refuses_placeholder_secrets", setting="SECRET_KEY"),
    Variable("DEBUG", "true", "DEBUG",
             f"{BEHAVIOUR}::test_debug_shows_detailed_errors_and_relaxes_the_secret_checks"),
    Variable("ALLOWED_HOSTS", "mail.example.com,localhost", "ALLOWED_HOSTS",
             f"{BEHAVIOUR}::test_a_host_not_allowed_gets_400"),
    Variable("CSRF_TRUSTED_ORIGINS", "https://mail.example.com", "CSRF_TRUSTED_ORIGINS",
             f"{BEHAVIOUR}::test_trusted_origins_admit_the_admin_forms_behind_a_proxy"),
    # Embedded instance
    Variable("GMP_DATA_DIR", "{tmp}/elsewhere",
             "[str(DATA_DIR), str(DB_PATH), CELERY_BROKER_TRANSPORT_OPTIONS['data_folder_in']]",
             f"{BEHAVIOUR}::test_data_dir_and_db_path_decide_where_the_embedded_files_are",
             example_is_default=False),  # the wiring runs in a temporary data folder, never the default
    Variable("GMP_DB_PATH", "{tmp}/db/other.db", "DATABASES['default']['NAME']",
             f"{BEHAVIOUR}::test_data_dir_and_db_path_decide_where_the_embedded_files_are"),
    # API
    Variable("GMP_MAX_REQUEST_MB", "3", "[GMP_MAX_REQUEST_MB, DATA_UPLOAD_MAX_MEMORY_SIZE]",
             "tests/queueing/test_add_messages.py::test_body_over_the_size_limit_is_413"),
    Variable("GMP_MAX_BATCH", "7", "GMP_MAX_BATCH",
             "tests/queueing/test_add_messages.py::test_batch_over_the_limit_is_413_and_stores_nothing"),
    Variable("GMP_MESSAGE_ID_DOMAIN", "ids.example.org", "GMP_MESSAGE_ID_DOMAIN",
             f"{BEHAVIOUR}::test_generated_message_ids_use_the_configured_domain"),
    Variable("GMP_API_KEY_TOUCH_SECONDS", "600", "GMP_API_KEY_TOUCH_SECONDS",
             f"{BEHAVIOUR}::test_last_used_is_written_at_most_once_per_touch_window"),
    Variable("GMP_REPORT_RETENTION_SECONDS", "86400", "GMP_REPORT_RETENTION_SECONDS",
             f"{BEHAVIOUR}::test_retention_default_decides_what_cleanup_removes"),
    Variable("GMP_API_RATE", "5/hour", "GMP_API_RATE",
             "tests/tenants/test_throttling.py::test_the_sixth_request_in_the_window_is_429_with_retry_after"),
    Variable("GMP_STATIC_ROOT", "{tmp}/static", "str(STATIC_ROOT)",
             f"{BEHAVIOUR}::test_collected_static_files_go_to_the_static_root"),
    # Delivery
    Variable("GMP_RATE_LIMITER", "redis", "GMP_RATE_LIMITER",
             "tests/queueing/test_ratelimit.py::test_explicit_limiter_setting_wins"),
    Variable("GMP_SEND_INTERVAL_SECONDS", "2.5", "GMP_SEND_INTERVAL_SECONDS",
             f"{BEHAVIOUR}::test_beat_schedule_follows_the_interval_settings"),
    Variable("GMP_RETRY_DELAYS", "10,20", "GMP_RETRY_DELAYS",
             f"{SEND}::test_retry_delay_follows_the_schedule_with_jitter"),
    Variable("GMP_MAX_RETRIES", "2", "GMP_MAX_RETRIES",
             f"{SEND}::test_temporary_forever_is_retried_exactly_max_retries_then_fails"),
    Variable("GMP_MAX_QUEUE_LIFETIME", "3600", "GMP_MAX_QUEUE_LIFETIME",
             f"{BEHAVIOUR}::test_queue_lifetime_decides_when_unreachable_mail_fails"),
    Variable("GMP_BATCH_SECONDS", "30", "[GMP_BATCH_SECONDS, CELERY_TASK_SOFT_TIME_LIMIT, CELERY_TASK_TIME_LIMIT]",
             f"{BEHAVIOUR}::test_batch_time_budget_hands_the_rest_back"),
    Variable("GMP_RING_SECONDS", "45", "GMP_RING_SECONDS",
             f"{BEHAVIOUR}::test_ring_window_follows_the_setting"),
    Variable("GMP_BACKOFF_MIN_SECONDS", "7", "GMP_BACKOFF_MIN_SECONDS",
             f"{BEHAVIOUR}::test_unreachable_server_backoff_follows_its_bounds"),
    Variable("GMP_BACKOFF_MAX_SECONDS", "10", "GMP_BACKOFF_MAX_SECONDS",
             f"{BEHAVIOUR}::test_unreachable_server_backoff_follows_its_bounds"),
    Variable("GMP_AUTH_RETRY_SECONDS", "120", "GMP_AUTH_RETRY_SECONDS",
             f"{BEHAVIOUR}::test_refused_credentials_pause_the_account_for_the_auth_retry"),
    # Delivery reports
    Variable("GMP_CLIENT_SYNC_URL", "https://crm.example.com/sync", "GMP_CLIENT_SYNC_URL",
             f"{REPORTS}::test_instance_wide_sync_url_serves_tenants_without_one"),
    Variable("GMP_REPORT_BATCH", "50", "GMP_REPORT_BATCH",
             f"{BEHAVIOUR}::test_report_batch_bounds_each_call"),
    Variable("GMP_REPORT_TIMEOUT", "5", "GMP_REPORT_TIMEOUT",
             f"{REPORTS}::test_timeout_is_retried_and_nothing_is_lost"),
    Variable("GMP_SYNC_INTERVAL", "60", "GMP_SYNC_INTERVAL", f"{REPORTS}::test_heartbeat_every_sync_interval"),
    Variable("GMP_SYNC_MIN_INTERVAL", "10", "GMP_SYNC_MIN_INTERVAL",
             f"{BEHAVIOUR}::test_announced_mail_is_asked_for_at_most_every_min_interval"),
    Variable("GMP_REPORT_BACKOFF_MIN_SECONDS", "7", "GMP_REPORT_BACKOFF_MIN_SECONDS",
             f"{BEHAVIOUR}::test_failed_report_calls_back_off_within_their_bounds"),
    Variable("GMP_REPORT_BACKOFF_MAX_SECONDS", "10", "GMP_REPORT_BACKOFF_MAX_SECONDS",
             f"{BEHAVIOUR}::test_failed_report_calls_back_off_within_their_bounds"),
    Variable("GMP_REPORT_GIVE_UP_SECONDS", "3600", "GMP_REPORT_GIVE_UP_SECONDS",
             f"{BEHAVIOUR}::test_reports_are_given_up_after_the_configured_time"),
    Variable("GMP_CLEANUP_INTERVAL_SECONDS", "600", "GMP_CLEANUP_INTERVAL_SECONDS",
             f"{BEHAVIOUR}::test_beat_schedule_follows_the_interval_settings"),
    Variable("GMP_ALLOWED_HOSTS", "10.0.0.0/8,crm.internal", "GMP_ALLOWED_HOSTS",
             "tests/test_safehttp.py::test_allowed_host_is_reached"),
    Variable("GMP_FETCH_TIMEOUT", "5", "GMP_FETCH_TIMEOUT", f"{FETCHERS}::test_http_timeout_is_temporary"),
    # Bounces, suppression, PEC
    Variable("GMP_SUPPRESSION_DAYS", "0", "GMP_SUPPRESSION_DAYS",
             "tests/bounces/test_suppressions.py::test_zero_days_means_never_expires"),
    Variable("GMP_BOUNCE_IMAP_HOST", "imap.example.com", "GMP_BOUNCE_IMAP_HOST", BOUNCE_MAILBOX),
    Variable("GMP_BOUNCE_IMAP_PORT", "143", "GMP_BOUNCE_IMAP_PORT", BOUNCE_MAILBOX),
    Variable("GMP_BOUNCE_IMAP_USER", "bounces", "GMP_BOUNCE_IMAP_USER", BOUNCE_MAILBOX),
    Variable("GMP_BOUNCE_IMAP_PASSWORD", "mailbox-password", "GMP_BOUNCE_IMAP_PASSWORD", BOUNCE_MAILBOX),
    Variable("GMP_BOUNCE_IMAP_FOLDER", "Bounces", "GMP_BOUNCE_IMAP_FOLDER", BOUNCE_MAILBOX),
    Variable("GMP_BOUNCE_IMAP_SECURITY", "starttls", "GMP_BOUNCE_IMAP_SECURITY", BOUNCE_MAILBOX),
    Variable("GMP_BOUNCE_PROCESSED_FOLDER", "Done", "GMP_BOUNCE_PROCESSED_FOLDER", BOUNCE_MAILBOX),
    Variable("GMP_BOUNCE_POLL_INTERVAL", "300", "GMP_BOUNCE_POLL_INTERVAL", BOUNCE_MAILBOX),
    Variable("GMP_PEC_ACCEPTANCE_TIMEOUT", "60", "GMP_PEC_ACCEPTANCE_TIMEOUT",
             "tests/pec/test_pec_flow.py::test_missing_receipts_time_out_once"),
    Variable("GMP_PEC_DELIVERY_TIMEOUT", "120", "GMP_PEC_DELIVERY_TIMEOUT",
             "tests/pec/test_pec_flow.py::test_missing_receipts_time_out_once"),
    # Attachments
    Variable("GMP_ATTACHMENT_BASE_DIRS", "/srv/one,/srv/two", "GMP_ATTACHMENT_BASE_DIRS",
             f"{FETCHERS}::test_filesystem_reads_from_any_configured_folder"),
    Variable("GMP_MAX_ATTACHMENT_MB", "2", "GMP_MAX_ATTACHMENT_MB",
             f"{FETCHERS}::test_filesystem_refuses_files_over_the_size_cap"),
    Variable("GMP_MAX_CONCURRENT_FETCHES", "2", "GMP_MAX_CONCURRENT_FETCHES",
             "tests/delivery/attachments/test_fetch_attachments.py::test_parallel_fetches_are_bounded"),
    Variable("GMP_CACHE_MEMORY_MB", "1", "GMP_CACHE_MEMORY_MB",
             f"{CACHE}::test_memory_cache_bounded_by_size_fetches_evicted_entries_again"),
    Variable("GMP_CACHE_DIR", "{tmp}/cache", "GMP_CACHE_DIR", f"{CACHE}::test_two_processes_fetch_a_shared_url_once"),
    Variable("GMP_CACHE_DISK_MB", "0", "GMP_CACHE_DISK_MB",
             f"{BEHAVIOUR}::test_disk_cache_size_zero_turns_the_disk_tier_off"),
    Variable("GMP_CACHE_TTL", "0", "GMP_CACHE_TTL", f"{CACHE}::test_zero_ttl_turns_caching_off"),
    # Command line
    Variable("GMP_HOME", "{tmp}/instances", "str(cli.home())",
             f"{BEHAVIOUR}::test_gmp_home_is_where_the_cli_keeps_its_instances"),
    Variable("MAIL_PROXY_TRACEBACK", "1", "cli_traceback()",
             f"{BEHAVIOUR}::test_traceback_variable_shows_unexpected_cli_errors_in_full"),
    # Operations
    Variable("GMP_DB_CONN_MAX_AGE", "0", "DATABASES['default']['CONN_MAX_AGE']",
             f"{BEHAVIOUR}::test_connection_max_age_zero_closes_the_connection_after_each_request",
             env={"DATABASE_URL": POSTGRES_URL}),  # read for PostgreSQL only
    Variable("GMP_LOG_LEVEL", "WARNING", "LOGGING['root']['level']",
             f"{BEHAVIOUR}::test_log_level_filters_the_console"),
    Variable("GMP_LOG_JSON", "true", "LOGGING['handlers']['console']['formatter']",
             "tests/test_ready.py::test_gmp_log_json_switches_the_console_to_json"),
    Variable("GMP_METRICS_PUBLIC", "true", "GMP_METRICS_PUBLIC",
             "tests/test_metrics.py::test_public_metrics_need_no_token"),
)
BY_NAME = {variable.name: variable for variable in TABLE}
# Refusals the typed readers cannot know of: a choice among names, a rate.
EXTRA_BAD_VALUES = (("GMP_RATE_LIMITER", "memcached"), ("GMP_API_RATE", "fast"))


# -- the source, read as text -----------------------------------------------------------------


@dataclass(frozen=True)
class Read:
    name: str
    reader: str  # env_str, env_int, ...
    minimum: float | None


def settings_reads() -> list[Read]:
    """Every env_*("NAME", ...) call of mailproxy/settings.py, with its reader and minimum."""
    reads = []
    for node in ast.walk(ast.parse(SETTINGS_FILE.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.startswith("env_")):
            continue
        if not (node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            continue
        minimum = None
        for keyword in node.keywords:
            if keyword.arg == "minimum":
                minimum = ast.literal_eval(keyword.value)
        reads.append(Read(node.args[0].value, node.func.id, minimum))
    return reads


def example_values() -> dict[str, str]:
    """The variables of .env.example with the value written there."""
    text = EXAMPLE_FILE.read_text(encoding="utf-8")
    return {name: value.strip() for name, value in re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, flags=re.MULTILINE)}


def bad_values() -> list[tuple[str, str]]:
    """Values each typed reader must refuse: not a number, not true/false, below the minimum."""
    cases: list[tuple[str, str]] = []
    for read in settings_reads():
        if read.reader in ("env_int", "env_float"):
            cases.append((read.name, "abc"))
        if read.reader == "env_bool":
            cases.append((read.name, "ture"))
        if read.reader == "env_int_list":
            cases.append((read.name, "60,abc"))
        if read.minimum is not None:
            below = read.minimum - 1 if read.reader == "env_int" else read.minimum - 0.05
            cases.append((read.name, str(below)))
    return [*cases, *EXTRA_BAD_VALUES]


def secret_names() -> list[str]:
    return [read.name for read in settings_reads() if read.reader == "env_secret"]


# -- the wiring run: one process loading the settings once per case ---------------------------

# Each case loads mailproxy/settings.py afresh (a new module object, executed from its file)
# with exactly the case's environment, then evaluates the probes against it.
DRIVER = r"""
import importlib.util, json, os, sys
from mailproxy import cli
from mailproxy.env import ConfigError

def cli_traceback():
    def fails(args):
        raise ZeroDivisionError("an unexpected error")
    cli.TOP_COMMANDS["fails"] = fails
    try:
        return cli.main(["fails"])
    except ZeroDivisionError:
        return "raised"

base = dict(os.environ)
results = {}
for case in json.load(sys.stdin):
    os.environ.clear()
    os.environ.update(base)
    os.environ.update(case["env"])
    spec = importlib.util.spec_from_file_location("mailproxy.settings", case["settings"])
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ConfigError as exc:
        results[case["key"]] = {"error": f"ConfigError: {exc}"}
        continue
    namespace = {**vars(module), "cli": cli, "cli_traceback": cli_traceback}
    values = {}
    for probe in case["probes"]:
        try:
            values[probe] = eval(probe, namespace)
        except Exception as exc:
            values[probe] = f"<{type(exc).__name__}>"
    results[case["key"]] = {"values": values}
print(json.dumps(results, default=str))
"""


def clean_environment(tmp: Path) -> dict[str, str]:
    """A process environment without any product variable but a data folder of its own."""
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp / "home"), "LANG": "C.UTF-8",
            "DJANGO_SETTINGS_MODULE": "mailproxy.settings", "GMP_DATA_DIR": str(tmp / "data"),
            "PYTHONDONTWRITEBYTECODE": "1"}


def _default_key(extra: dict[str, str]) -> str:
    return "default" + "".join(f"+{name}" for name in sorted(extra))


@dataclass
class Wiring:
    tmp: Path
    results: dict[str, dict[str, Any]]

    def values(self, key: str) -> dict[str, Any]:
        result = self.results[key]
        assert "values" in result, result
        return dict(result["values"])

    def default(self, variable: Variable) -> Any:
        return self.values(_default_key(variable.env))[variable.probe]


def value_of(variable: Variable, tmp: Path) -> str:
    return variable.value.replace("{tmp}", str(tmp))


@pytest.fixture(scope="module")
def wiring(tmp_path_factory: pytest.TempPathFactory) -> Wiring:
    tmp = tmp_path_factory.mktemp("wiring")
    all_probes = sorted({variable.probe for variable in TABLE})
    cases: list[dict[str, Any]] = []

    def case(key: str, environment: dict[str, str], probes: list[str]) -> None:
        cases.append({"key": key, "env": environment, "probes": probes, "settings": str(SETTINGS_FILE)})

    for extra in {json.dumps(variable.env, sort_keys=True) for variable in TABLE}:
        environment = json.loads(extra)
        case(_default_key(environment), environment, all_probes)
    examples = example_values()
    for variable in TABLE:
        case(f"set:{variable.name}", {**variable.env, variable.name: value_of(variable, tmp)}, [variable.probe])
        if variable.example_is_default and variable.name in examples:
            case(f"example:{variable.name}", {**variable.env, variable.name: examples[variable.name]},
                 [variable.probe])
    for name, bad in bad_values():
        case(f"bad:{name}={bad}", {**BY_NAME[name].env, name: bad} if name in BY_NAME else {name: bad}, [])
    for name in secret_names():
        secret = tmp / f"{name}.secret"
        secret.write_text(f"{name.lower()}-from-a-file-0123456789abcdefghijklmnop\n", encoding="utf-8")
        probe = BY_NAME[name].probe if name in BY_NAME else name
        case(f"file:{name}", {f"{name}_FILE": str(secret)}, [probe])
        case(f"missing-file:{name}", {f"{name}_FILE": str(tmp / "no-such-file")}, [])
    done = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(cases), cwd=ROOT,
                          env=clean_environment(tmp), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return Wiring(tmp=tmp, results=json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("variable", TABLE, ids=[variable.name for variable in TABLE])
def test_each_variable_changes_its_setting(wiring: Wiring, variable: Variable) -> None:
    changed = wiring.values(f"set:{variable.name}")[variable.probe]
    assert changed != wiring.default(variable), f"{variable.name}={variable.value} left {variable.probe} unchanged"


@pytest.mark.parametrize("variable", [v for v in TABLE if v.example_is_default],
                         ids=[v.name for v in TABLE if v.example_is_default])
def test_the_value_written_in_the_example_is_the_default(wiring: Wiring, variable: Variable) -> None:
    written = example_values()[variable.name]
    assert wiring.values(f"example:{variable.name}")[variable.probe] == wiring.default(variable), (
        f".env.example says {variable.name}={written}, which is not what an unset {variable.name} gives")


@pytest.mark.parametrize(("name", "bad"), bad_values(), ids=[f"{n}={b}" for n, b in bad_values()])
def test_a_malformed_value_is_refused_naming_the_variable(wiring: Wiring, name: str, bad: str) -> None:
    result = wiring.results[f"bad:{name}={bad}"]
    assert "error" in result, f"{name}={bad} was accepted"
    assert result["error"].startswith(f"ConfigError: {name} must ")


@pytest.mark.parametrize("name", secret_names())
def test_a_secret_is_read_from_its_file_twin(wiring: Wiring, name: str) -> None:
    probe = BY_NAME[name].probe if name in BY_NAME else name
    assert wiring.values(f"file:{name}")[probe] == f"{name.lower()}-from-a-file-0123456789abcdefghijklmnop"
    missing = wiring.results[f"missing-file:{name}"]
    assert missing.get("error", "").startswith(f"ConfigError: {name}_FILE points to ")


def _fresh_process(tmp: Path, extra: dict[str, str], probes: list[str]) -> subprocess.CompletedProcess[str]:
    program = ("import json, sys, django; django.setup(); from django.conf import settings; "
               "from mailproxy import cli; "
               "ns = {k: getattr(settings, k) for k in dir(settings) if k.isupper()}; ns['cli'] = cli; "
               "print(json.dumps({p: eval(p, ns) for p in json.loads(sys.argv[1])}, default=str))")
    return subprocess.run([sys.executable, "-c", program, json.dumps(probes)], cwd=ROOT,
                          env={**clean_environment(tmp), **extra}, capture_output=True, text=True, timeout=60,
                          check=False)


def test_the_wiring_run_agrees_with_a_freshly_started_process(wiring: Wiring) -> None:
    """The per-case reload gives what a process setting Django up from scratch gets."""
    samples = [BY_NAME["GMP_BATCH_SECONDS"], BY_NAME["REDIS_URL"]]  # a derived setting, a conditional one
    probes = [variable.probe for variable in samples]
    jobs = {"default": {}, **{variable.name: {variable.name: value_of(variable, wiring.tmp)} for variable in samples}}
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        runs = dict(zip(jobs, pool.map(lambda extra: _fresh_process(wiring.tmp, extra, probes), jobs.values()),
                        strict=True))
    for key, run in runs.items():
        assert run.returncode == 0, run.stderr
        fresh = json.loads(run.stdout.splitlines()[-1])
        if key == "default":
            assert fresh == {probe: wiring.values("default")[probe] for probe in probes}
        else:
            probe = BY_NAME[key].probe
            assert fresh[probe] == wiring.values(f"set:{key}")[probe]


@pytest.mark.parametrize(("name", "bad"), [("GMP_MAX_BATCH", "abc"), ("GMP_SEND_INTERVAL_SECONDS", "0.01"),
                                           ("GMP_METRICS_PUBLIC", "ture"), ("GMP_RETRY_DELAYS", "60,abc"),
                                           ("GMP_RATE_LIMITER", "memcached")])
def test_a_malformed_value_stops_the_process_at_start(tmp_path: Path, name: str, bad: str) -> None:
    done = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT,
                          env={**clean_environment(tmp_path), name: bad}, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0
    assert f"ConfigError: {name} must " in done.stderr.splitlines()[-1]


# -- every variable has a test proving its behaviour ------------------------------------------


def _test_source(node_id: str) -> str | None:
    """The source of a top-level test function, or None if there is none.

    Decorators count as part of it, and so does the definition of a module-level decorator
    (`FAST_RETRIES = override_settings(...)` used as `@FAST_RETRIES`).
    """
    path, _, name = node_id.partition("::")
    name = name.split("[", 1)[0]
    file = ROOT / path
    if not file.exists():
        return None
    source = file.read_text(encoding="utf-8")
    module = ast.parse(source)
    assigned = {target.id: node for node in module.body if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name)}
    for node in module.body:
        if isinstance(node, ast.FunctionDef) and node.name == name and name.startswith("test_"):
            first = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)])
            parts = ["\n".join(source.splitlines()[first - 1:node.end_lineno])]
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Name) and decorator.id in assigned:
                    parts.append(ast.get_source_segment(source, assigned[decorator.id]) or "")
            return "\n".join(parts)
    return None


@pytest.mark.parametrize("variable", TABLE, ids=[variable.name for variable in TABLE])
def test_each_variable_names_a_test_proving_its_behaviour(variable: Variable) -> None:
    source = _test_source(variable.proof)
    assert source is not None, f"{variable.name}: no test {variable.proof}"
    assert re.search(rf"\b{variable.mentioned_as}\b", source), (
        f"{variable.proof} does not mention {variable.mentioned_as}")


# -- completeness: the table, .env.example and the source agree --------------------------------


def test_every_variable_the_settings_read_is_documented_and_in_the_table() -> None:
    read = {read.name for read in settings_reads()}
    assert {"DATABASE_URL", "GMP_MAX_BATCH", "GMP_API_TOKEN", "GMP_LOG_JSON"} <= read  # the parser works
    assert read - set(example_values()) == set(), "read by the settings, missing from .env.example"
    assert read - set(BY_NAME) == set(), "read by the settings, missing from the table of tests/test_config.py"


def test_every_documented_variable_is_read_and_in_the_table() -> None:
    documented = set(example_values())
    read = {read.name for read in settings_reads()} | env.READ_BY_CLI
    assert documented - read == set(), "documented in .env.example but read nowhere"
    assert documented == set(BY_NAME)
    assert len(TABLE) == len(BY_NAME)  # no variable twice


def test_variables_read_directly_by_the_code_are_known() -> None:
    """A variable read with os.environ instead of the readers must still count as known."""
    pattern = re.compile(r"""(?:environ(?:\.get)?[\[(]|getenv\()\s*["']((?:GMP|MAIL_PROXY)_[A-Z0-9_]+)["']""")
    direct: dict[str, set[str]] = {}
    for package in PRODUCT_PACKAGES:
        for file in (ROOT / package).rglob("*.py"):
            for name in pattern.findall(file.read_text(encoding="utf-8")):
                direct.setdefault(name, set()).add(str(file.relative_to(ROOT)))
    assert "GMP_HOME" in direct  # the pattern works
    known = {read.name for read in settings_reads()} | env.READ_BY_CLI | {f"{n}_FILE" for n in secret_names()}
    assert {name: files for name, files in direct.items() if name not in known} == {}
    cli_source = CLI_FILE.read_text(encoding="utf-8")
    for name in env.READ_BY_CLI:
        assert f'"{name}"' in cli_source, f"{name} is no longer read by the CLI"


# -- unknown variables are named at start-up ---------------------------------------------------


def test_unknown_variables_are_named_with_a_suggestion() -> None:
    environ = {"GMP_SEND_INTERVAL_SECOND": "2", "GMP_MAX_BATCH": "5", "GMP_API_TOKEN_FILE": "/run/secrets/t",
               "GMP_HOME": "/srv/instances", "MAIL_PROXY_ENCRYPTON_KEY": "x", "GMP_NOTHING_LIKE_IT": "1",
               "PATH": "/usr/bin", "DJANGO_SETTINGS_MODULE": "mailproxy.settings"}
    assert env.unknown_variables(environ) == {
        "GMP_NOTHING_LIKE_IT": None,
        "GMP_SEND_INTERVAL_SECOND": "GMP_SEND_INTERVAL_SECONDS",
        "MAIL_PROXY_ENCRYPTON_KEY": "MAIL_PROXY_ENCRYPTION_KEY",
    }


def test_the_system_check_warns_of_unknown_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith(env.PREFIXES) and name not in env.READ]:
        monkeypatch.delenv(name)  # whatever the shell running the suite exports
    assert check_unknown_variables() == []
    monkeypatch.setenv("GMP_MAX_BACH", "5")
    [warning] = check_unknown_variables()
    assert isinstance(warning, CheckWarning)
    assert warning.id == "mailproxy.W001"
    assert "GMP_MAX_BACH (did you mean GMP_MAX_BATCH?)" in warning.msg


def _check(tmp_path: Path, **extra: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT,
                          env={**clean_environment(tmp_path), **extra}, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_a_misspelt_variable_is_named_at_start_and_by_check_without_its_value(tmp_path: Path) -> None:
    output = _check(tmp_path, GMP_SEND_INTERVAL_SECOND="2", GMP_API_TOKN="s3cret-value-never-shown-0123456789")
    expected = ("GMP_API_TOKN (did you mean GMP_API_TOKEN?), "
                "GMP_SEND_INTERVAL_SECOND (did you mean GMP_SEND_INTERVAL_SECONDS?)")
    logged = [line for line in output.splitlines() if "WARNING mailproxy.apps" in line]
    assert len(logged) == 1  # one line, from the app's start-up
    assert expected in logged[0]
    assert f"(mailproxy.W001) environment variables not read by mail-proxy, so without effect: {expected}" in output
    assert "s3cret-value-never-shown" not in output


def test_the_web_process_names_unknown_variables_once_at_start(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import mailproxy.wsgi"], cwd=ROOT,
                          env={**clean_environment(tmp_path), "GMP_MAX_BACH": "5"}, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stderr.splitlines() if "not read by mail-proxy" in line]
    assert "WARNING mailproxy.apps" in line
    assert line.endswith("GMP_MAX_BACH (did you mean GMP_MAX_BATCH?)")


def test_known_variables_give_no_warning(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("Zx81kq0PmsN2vT6wYb4Rj7cL9dHf3gAeUoIi5Kp\n", encoding="utf-8")
    output = _check(tmp_path, GMP_SEND_INTERVAL_SECONDS="2", GMP_API_TOKEN_FILE=str(token),
                    GMP_HOME=str(tmp_path), MAIL_PROXY_TRACEBACK="1")
    assert "not read by mail-proxy" not in output
    assert "System check identified no issues" in output
