"""The client package stands alone: the standard library, requests, and Django only in django.py."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import mailproxy_client

PACKAGE = Path(mailproxy_client.__file__).parent
SERVER_PACKAGES = {"tenants", "queueing", "delivery", "bounces", "pec", "mailproxy", "control", "tests"}


def imported_roots(path: Path) -> set[str]:
    """Top-level names of the absolute imports of one module (relative ones stay inside the package)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_package_imports_only_stdlib_requests_and_django_in_its_backend() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert {path.name for path in modules} >= {"__init__.py", "client.py", "errors.py", "signature.py", "django.py"}
    for path in modules:
        allowed = set(sys.stdlib_module_names) | {"requests", "mailproxy_client"}
        if path.name == "django.py":
            allowed.add("django")
        roots = imported_roots(path)
        assert not roots & SERVER_PACKAGES, f"{path.name} imports a server module: {roots & SERVER_PACKAGES}"
        assert roots <= allowed, f"{path.name} imports {sorted(roots - allowed)}"


def test_importing_the_client_loads_neither_django_nor_the_server(tmp_path: Path) -> None:
    shutil.copytree(PACKAGE, tmp_path / "mailproxy_client", ignore=shutil.ignore_patterns("__pycache__"))
    script = ("import json, sys, mailproxy_client, mailproxy_client.signature, mailproxy_client.client;"
              "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))")
    # cwd is the copy's parent and first on sys.path, so the copy is what is imported.
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"}, check=True, timeout=60)
    loaded = set(json.loads(result.stdout))
    assert "mailproxy_client" in loaded
    assert not loaded & (SERVER_PACKAGES | {"django", "rest_framework"})
