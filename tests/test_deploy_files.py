"""The deployment files stay true to the code: docker-compose.yml, .env.example,
deploy/nginx.conf, the Dockerfile and scripts/dev-stack.

Nothing here runs Docker, nginx or the dev stack: the files are parsed and
checked against server.config, which is what would refuse them at start-up.
tests/test_proxy.py runs nginx on dev-stack's rendering of deploy/nginx.conf.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
import yaml

from hubbub.server.config import ENV_PREFIX, SETTING_NAMES, ConfigError, Settings, env_name, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
DOCKERFILE = ROOT / "Dockerfile"
DEV_STACK = ROOT / "scripts" / "dev-stack"

SERVICES = ("postgres", "mongo", "redis", "hubbub-1", "hubbub-2", "proxy")
REPLICAS = ("hubbub-1", "hubbub-2")
KNOWN_ENV_NAMES = {env_name(field) for field in SETTING_NAMES}

# Compose interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
# ${VAR:?error}, ${VAR?error}, ${VAR:+alternative}, ${VAR+alternative}.
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<plain>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})"
)


def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def services() -> dict[str, Any]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment, in mapping or list form, as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = [item.split("=", 1) if "=" in item else [item, ""] for item in env]
        return {key: value for key, value in pairs}
    return {
        str(key): "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        for key, value in env.items()
    }


def interpolated_names(text: str) -> set[str]:
    """Every variable a compose file interpolates (comments excluded)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for match in _INTERPOLATION.finditer(line):
            name = match.group("plain") or match.group("braced")
            if name:
                names.add(name)
    return names


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """``value`` with ``${...}`` replaced as ``docker compose`` would, given ``variables``."""

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("plain") or match.group("braced")
        op, arg = match.group("op"), match.group("arg") or ""
        current = variables.get(name)
        # With a colon, empty counts as unset.
        unset = not current if op and op.startswith(":") else current is None
        if op in ("-", ":-"):
            return arg if unset else str(current)
        if op in ("?", ":?"):
            if unset:
                raise AssertionError(f"{name} is required: {arg}")
            return str(current)
        if op in ("+", ":+"):
            return "" if unset else arg
        return current or ""

    return _INTERPOLATION.sub(replace, value)


def env_example() -> dict[str, str]:
    """KEY=value lines of .env.example (comments and blanks skipped, quotes removed)."""
    values: dict[str, str] = {}
    for raw in ENV_EXAMPLE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f".env.example: not KEY=value: {raw!r}"
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f".env.example: bad name {key!r}"
        values[key] = value.strip().strip("'\"")
    return values


def test_compose_has_every_service_and_healthchecks() -> None:
    found = services()
    assert set(SERVICES) <= set(found), f"missing services: {set(SERVICES) - set(found)}"
    for name in SERVICES:
        if name != "proxy":
            assert found[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert compose().get("volumes"), "named volumes expected"


def test_compose_replicas_share_one_configuration() -> None:
    found = services()
    first, second = (found[name] for name in REPLICAS)
    assert first == second, "both replicas come from the one x-hubbub block"
    assert first.get("build"), "replicas are built from the Dockerfile"
    for store in ("postgres", "mongo"):
        assert first["depends_on"][store]["condition"] == "service_healthy"
    readiness = " ".join(map(str, first["healthcheck"]["test"]))
    assert "/readyz" in readiness


def test_compose_proxy_serves_nginx_conf_on_8080() -> None:
    proxy = services()["proxy"]
    assert proxy["image"].startswith("nginx")
    assert "8080:8080" in [str(port) for port in proxy["ports"]]
    assert any(
        str(volume).startswith("./deploy/nginx.conf:") and str(volume).endswith(":ro") for volume in proxy["volumes"]
    )


def test_compose_sets_only_known_hubbub_settings() -> None:
    for name, service in services().items():
        for key in environment(service):
            if key.startswith(ENV_PREFIX):
                assert key in KNOWN_ENV_NAMES, f"{name} sets {key}, which server.config.Settings does not know"


def test_env_example_defines_every_interpolated_variable() -> None:
    needed = interpolated_names(COMPOSE.read_text())
    assert "HUBBUB_JWT_SECRET" in needed
    missing = needed - set(env_example())
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_jwt_secret_is_required_not_defaulted() -> None:
    for name in REPLICAS:
        assert re.fullmatch(r"\$\{HUBBUB_JWT_SECRET:\?[^}]+\}", environment(services()[name])["HUBBUB_JWT_SECRET"])
    with pytest.raises(AssertionError, match="HUBBUB_JWT_SECRET is required"):
        interpolate(environment(services()["hubbub-1"])["HUBBUB_JWT_SECRET"], {})


def test_env_example_placeholder_secret_is_refused() -> None:
    """A .env copied from .env.example and not edited must not sign tokens."""
    variables = env_example()
    env = {key: interpolate(value, variables) for key, value in environment(services()["hubbub-1"]).items()}
    for profile in ("local", "cloud"):
        with pytest.raises(ConfigError, match=r"placeholder.*secrets\.token_urlsafe"):
            load_settings({**env, "HUBBUB_PROFILE": profile})


def test_replicas_trust_only_the_proxy() -> None:
    """Behind nginx, X-Forwarded-For names the client only if the replicas
    trust nginx's address, and only that: their own port is not published."""
    found = services()
    proxy_address = found["proxy"]["networks"]["default"]["ipv4_address"]
    subnet = compose()["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert ip_address(proxy_address) in ip_network(subnet)
    for name in REPLICAS:
        assert environment(found[name])["HUBBUB_TRUSTED_PROXIES"] == proxy_address
        assert "ports" not in found[name], f"{name} must be reachable only through the proxy"


def test_hubbub_service_environment_loads() -> None:
    variables = {**env_example(), "HUBBUB_JWT_SECRET": "a-real-secret-of-at-least-32-bytes-for-tests"}
    for name in REPLICAS:
        env = {key: interpolate(value, variables) for key, value in environment(services()[name]).items()}
        settings = load_settings(env)
        assert isinstance(settings, Settings)
        assert (settings.host, settings.port, settings.profile) == ("0.0.0.0", 8765, "local")
        assert settings.storage.resolved_accounts_backend == "postgres"
        assert settings.storage.resolved_messages_backend == "mongo"
        assert "replicaSet=rs0" in settings.mongo_url
        assert settings.auto_migrate
        assert settings.jwt_secret == variables["HUBBUB_JWT_SECRET"]
        assert [str(net) for net in settings.http.proxy_networks] == ["172.30.80.10/32"]


def test_nginx_conf_proxies_websockets_to_both_replicas() -> None:
    text = NGINX_CONF.read_text()
    upstream = re.search(r"upstream\s+(\w+)\s*\{(.*?)\}", text, re.S)
    assert upstream, "an upstream block"
    for name in REPLICAS:
        assert re.search(rf"^\s*server\s+{name}:8765\b", upstream.group(2), re.M), f"upstream lacks {name}:8765"
    assert f"proxy_pass http://{upstream.group(1)};" in text
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade;", text)
    assert re.search(r"proxy_set_header\s+Connection\s+\$connection_upgrade;", text)
    assert re.search(r"proxy_http_version\s+1\.1;", text)
    assert re.search(r"listen\s+8080;", text)
    assert "location = /healthz" in text
    # scripts/dev-stack renders its own copy by substituting these exact texts.
    dev_stack = DEV_STACK.read_text()
    for rewritten in (
        "server hubbub-1:8765",
        "server hubbub-2:8765",
        "listen 8080;  # dev-stack: listen",
        "access_log /var/log/nginx/access.log;",
        "# dev-stack: temp paths are added here.",
    ):
        assert rewritten in text, f"deploy/nginx.conf lost {rewritten!r}, which scripts/dev-stack rewrites"
        assert rewritten in dev_stack, f"scripts/dev-stack no longer rewrites {rewritten!r}"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            instruction, _, args = stripped.partition(" ")
            result.append((instruction.upper(), args.strip()))
    return result


def test_dockerfile_runs_hubbub_serve_as_non_root() -> None:
    instructions = dockerfile_instructions()
    final_stage = instructions[max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM") :]
    assert final_stage[0][1].startswith("python:3.12-slim")
    users = [args for ins, args in final_stage if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root USER"
    cmds = [args for ins, args in final_stage if ins == "CMD"]
    assert cmds and cmds[-1].replace(" ", "") == '["hubbub","serve"]'
    assert ("EXPOSE", "8765") in final_stage
    healthcheck = " ".join(args for ins, args in final_stage if ins == "HEALTHCHECK")
    assert "/healthz" in healthcheck
    for ins, args in final_stage:
        if ins == "ENV":
            for key in re.findall(r"(HUBBUB_[A-Z0-9_]+)=", args):
                assert key in KNOWN_ENV_NAMES, f"Dockerfile sets unknown {key}"


def test_dev_stack_is_an_executable_bash_script() -> None:
    assert os.access(DEV_STACK, os.X_OK), "chmod +x scripts/dev-stack"
    assert DEV_STACK.read_text().startswith("#!/usr/bin/env bash\n")
    bash = shutil.which("bash")
    assert bash is not None
    result = subprocess.run([bash, "-n", str(DEV_STACK)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    for command in ("up)", "down)", "status)"):
        assert command in DEV_STACK.read_text()
