"""The container image without a container engine: its entrypoint is the CLI, and every
command the operator renders parses with the CLI's own parser (the chart's operator command is
parsed the same way in tests/e2e/test_helm.py; the install steps run in a fresh virtualenv in
tests/integration/test_image_install.py)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from startupmonkey import cli
from startupmonkey.operator import children, config, render
from startupmonkey.operator import monitor as operator_monitor

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_dockerfile_pins_a_slim_base_and_runs_as_non_root() -> None:
    # The base is a build argument (hack/build-image.sh passes a locally built Debian base);
    # its default is a pinned slim Python image.
    (default,) = re.findall(r"^ARG BASE=(\S+)$", DOCKERFILE, re.M)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", default)
    bases = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert bases and all(b == "${BASE}" for b in bases)
    final = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    assert "USER 10001:10001" in final
    assert "pip install" not in final, "no build tools or installs in the final stage"
    assert 'ENTRYPOINT ["startupmonkey"]' in final


def test_the_dockerfile_names_the_tests_that_stand_in_for_a_build() -> None:
    for test in re.findall(r"tests/\S+\.py", DOCKERFILE.split("\nFROM ", 1)[0]):
        assert (ROOT / test).is_file(), test
    assert "tests/integration/test_image_install.py replays" in DOCKERFILE.replace("\n# ", " ")


def test_the_entrypoint_is_the_cli() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"] == {"startupmonkey": "startupmonkey.cli:main"}


def test_every_data_plane_command_parses_with_the_real_cli() -> None:
    """Each container the operator renders (operator/children.py) runs `startupmonkey <its
    component>`: parsed by the CLI's own parser, the config is the mounted ConfigMap key and
    the observability port the one the probes use."""
    view = operator_monitor.parse({
        "metadata": {"name": "shop", "namespace": "prod", "uid": "u-1", "generation": 1},
        "spec": {"database": {"host": "db", "dbname": "shop",
                              "credentialsSecret": {"name": "shop-db"}}}})
    settings = config.from_env({})
    deployments = [o for o in children.data_plane(view, settings, "1")
                   if o["kind"] == "Deployment"]
    seen = set()
    for deployment in deployments:
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        command = container["command"]
        assert command[0] == "startupmonkey", "the image's entrypoint"
        args = cli.build_parser().parse_args(command[1:])
        assert args.command == component
        assert cli.COMMANDS[args.command][0] is not None, "a built subcommand"
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert args.config == Path(mounts["config"]) / render.CONFIG_KEY
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["config"]["configMap"]["name"] == view.config_map_name
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert ports[container[probe]["httpGet"]["port"]] == args.observability_port
        seen.add(component)
    assert seen == {str(c) for c in operator_monitor.DATA_PLANE}


def test_the_commands_parse_the_way_the_help_says() -> None:
    for component in operator_monitor.DATA_PLANE:
        assert "--config" in _help(str(component))


def _help(command: str) -> str:
    return subprocess.run([sys.executable, "-m", "startupmonkey.cli", command, "--help"],
                          capture_output=True, text=True, timeout=60, check=True).stdout
