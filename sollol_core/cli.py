"""The ``sollol`` command line.

Exit codes: 0 done, 1 a runtime failure (unreachable gateway, port in use), 2 bad usage or bad
settings (nothing was started).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import typing
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import aiohttp
import click
from attrs import define, field
from rich.console import Console
from rich.pretty import Pretty

from sollol_core import render
from sollol_core.breaker import CircuitSnapshot
from sollol_core.config import Flag, Settings, SettingsSection
from sollol_core.convert import structure, unstructure
from sollol_core.errors import ConfigError, SollolError
from sollol_core.fleet import Fleet
from sollol_core.plugins import PluginInfo, Plugins, declared_sections
from sollol_core.types import FleetSnapshot

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@define
class CliState:
    """What every subcommand shares: the config file given and the loaded plugins."""

    config_path: str | None
    plugins: Plugins
    sections: list[SettingsSection] = field(factory=list)

    def settings(self, **flags: Any) -> Settings:
        return Settings.load(config_path=self.config_path, flags=flags)

    def plugin_flags(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Plugins' options given on the command line, as dotted keys: a list option adds to
        the configured list ("also use this node")."""
        found: dict[str, Any] = {}
        base: Settings | None = None
        for section in self.sections:
            for flag in section.flags:
                value = given.get(_flag_name(section, flag))
                if value is None or value == ():
                    continue
                if isinstance(value, tuple):
                    base = base or self.settings()
                    value = tuple(getattr(base.section(section.type), flag.field)) + value
                found[f"{section.name}.{flag.field}"] = value
        return found


def _flag_name(section: SettingsSection, flag: Flag) -> str:
    return f"plugin__{section.name}__{flag.field}"


def add_plugin_flags(group: click.Group, sections: Sequence[SettingsSection]) -> None:
    """Give the commands the options that plugins declare in their settings sections."""
    for section in sections:
        hints = typing.get_type_hints(section.type)
        for flag in section.flags:
            kind = hints.get(flag.field)
            listed = typing.get_origin(kind) is tuple
            for name in flag.commands:
                command = group.commands.get(name)
                if command is None or any(p.name == _flag_name(section, flag)
                                          for p in command.params):
                    continue
                command.params.append(click.Option(
                    [flag.option, _flag_name(section, flag)], multiple=listed,
                    metavar=flag.metavar or None, help=flag.help,
                    type=None if listed or kind not in (int, float) else kind,
                    is_flag=kind is bool))


def fail(message: str, code: int = 1) -> NoReturn:
    for line in message.splitlines():
        click.echo(f"sollol: error: {line}", err=True)
    sys.exit(code)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@click.group(context_settings=CONTEXT)
@click.option("--config", "config_path", metavar="FILE", envvar="SOLLOL_CONFIG",
              help="TOML settings file (default: $SOLLOL_CONFIG).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True, help="What SOLLOL logs to stderr.")
@click.version_option(package_name="sollol-core", prog_name="sollol")
def cli(config_path: str | None, log_level: str) -> None:
    """SOLLOL: one endpoint in front of your Ollama and llama.cpp machines.

    Settings come from flags, then SOLLOL_* environment variables, then the TOML file given with
    --config, then defaults. See docs/configuration.md.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("sollol: %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # other libraries: warnings only
    for name in ("sollol_core", *(n.replace("-", "_") for n in _plugin_packages())):
        logging.getLogger(name).setLevel(log_level.upper())


def _plugin_packages() -> list[str]:
    import importlib.metadata

    return [ep.value.split(".")[0].split(":")[0]
            for ep in importlib.metadata.entry_points(group="sollol")]


@cli.command(context_settings=CONTEXT)
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 11435).")
@click.option("--api-key", "api_keys", multiple=True,
              help="Require this Bearer token (repeatable).")
@click.pass_obj
def serve(state: CliState, /, host: str | None, port: int | None, api_keys: tuple[str, ...],
          **plugin_options: Any) -> None:
    """Run the gateway until Ctrl-C."""
    from sollol_core.gateway.serve import run as run_gateway
    from sollol_core.router import Router

    settings = state.settings(**{"gateway.host": host, "gateway.port": port,
                                 "gateway.api_keys": api_keys or None},
                              **state.plugin_flags(plugin_options))
    router = Router.create(settings)  # plugin objects of its own, built from these settings
    try:
        run_gateway(router, ready=lambda line: click.echo(line, err=True))
    except SollolError as exc:
        fail(str(exc))
    click.echo("stopped", err=True)


@cli.command(context_settings=CONTEXT)
@click.option("--host", help="Address to listen on (default 127.0.0.1; others need "
              "--allow-remote).")
@click.option("--port", type=int, help="Port to listen on (default 11436).")
@click.option("--token", help="Require this Bearer token (better: $SOLLOL_AGENT_TOKEN, which "
              "other users cannot see in the process list). Default: the token in "
              "$SOLLOL_AGENT_TOKEN_FILE, else agent-token in SOLLOL's config directory "
              "(made if missing; its path is printed on start).")
@click.option("--allow-remote", is_flag=True,
              help="Allow a non-loopback --host: routers on other machines can use this one.")
@click.option("--advertise", metavar="HOST",
              help="Address routers reach this machine by, given in worker endpoints "
              "(default: --host, or the outgoing address when --host is 0.0.0.0).")
@click.pass_obj
def agent(state: CliState, host: str | None, port: int | None, token: str | None,
          allow_remote: bool, advertise: str | None) -> None:
    """Serve this machine to routers until Ctrl-C: its telemetry (every telemetry plugin) and
    what plugins add (the llamacpp plugin: start and stop RPC workers here)."""
    from sollol_core.agent import serve as agent_serve

    settings = state.settings(**{"agent.host": host, "agent.port": port,
                                 "agent.allow_remote": True if allow_remote else None,
                                 "agent.advertise": advertise, "discovery.agent_token": token})
    try:
        agent_serve.run(Plugins.load(settings), settings,
                        ready=lambda line: click.echo(line, err=True))
    except agent_serve.UnsafeAddress as exc:
        fail(str(exc), code=2)
    except SollolError as exc:
        fail(str(exc))
    click.echo("stopped", err=True)


@cli.command(context_settings=CONTEXT)
@click.option("--timeout", type=float, help="Seconds to wait for each probe (default 2).")
@json_option
@click.pass_obj
def discover(state: CliState, /, timeout: float | None, as_json: bool,
             **plugin_options: Any) -> None:
    """Find nodes once, probe each, and print what they hold."""
    settings = state.settings(**{"health.timeout_s": timeout},
                              **state.plugin_flags(plugin_options))
    snapshot = asyncio.run(_discover_once(Plugins.load(settings), settings))
    if as_json:
        emit_json(unstructure(snapshot))
        return
    show_fleet(snapshot)


async def _discover_once(plugins: Plugins, settings: Settings) -> FleetSnapshot:
    async with plugins.lifespan(settings):
        return await Fleet(plugins, settings).refresh()


def show_fleet(snapshot: FleetSnapshot) -> None:
    console = Console()
    if snapshot.nodes:
        console.print(render.nodes_table(snapshot))
    else:
        console.print("No nodes found. Name them with OLLAMA_NODES or RPC_BACKENDS (or "
                      "\\[ollama] nodes and \\[llamacpp] rpc_backends in the config file), and "
                      "check `sollol plugins` for the backend plugins that find them.")
    if snapshot.telemetry:
        console.print(render.telemetry_table(snapshot.telemetry))


@cli.command(context_settings=CONTEXT)
@click.option("--url", help="Gateway to ask (default: the configured host and port).")
@click.option("--api-key", help="Bearer token, if the gateway needs one.")
@json_option
@click.pass_obj
def status(state: CliState, url: str | None, api_key: str | None, as_json: bool) -> None:
    """Show what a running gateway knows: nodes, health, circuits, queue, machines, plugins."""
    settings = state.settings()
    gateway = settings.gateway
    host = "127.0.0.1" if gateway.host in {"0.0.0.0", "::"} else gateway.host
    base = (url or f"http://{host}:{gateway.port}").rstrip("/")
    key = api_key or next(iter(gateway.api_keys), None)
    try:
        body = asyncio.run(_fetch_status(base, key))
    except aiohttp.ClientError as exc:
        fail(f"no SOLLOL gateway answers at {base} ({exc}); start one with `sollol serve`")
    except TimeoutError:
        fail(f"the gateway at {base} did not answer within 5 s")
    if as_json:
        emit_json(body)
        return
    show_fleet(structure(body["fleet"], FleetSnapshot))
    console = Console()
    circuits = structure(body["circuits"], list[CircuitSnapshot])
    if circuits:
        console.print(render.circuits_table(circuits))
    console.print(f"Requests waiting for capacity: {body['queued']}")
    for section, value in (body.get("plugins_status") or {}).items():
        console.print(f"[bold]{section}[/]")
        console.print(Pretty(value))
    console.print(render.plugins_table(structure(body["plugins"], list[PluginInfo])))


async def _fetch_status(base: str, api_key: str | None) -> Any:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session, \
            session.get(f"{base}/api/sollol/status") as response:
        if response.status == 401:
            fail(f"the gateway at {base} wants an API key (--api-key or SOLLOL_API_KEYS)")
        response.raise_for_status()
        return await response.json()


@cli.command(context_settings=CONTEXT)
@json_option
@click.pass_obj
def plugins(state: CliState, as_json: bool) -> None:
    """List installed plugins: version, hooks, and whether each is enabled or blocked."""
    if as_json:
        emit_json(unstructure(state.plugins.infos))
        return
    Console().print(render.plugins_table(state.plugins.infos))


def _config_path_from(argv: Sequence[str]) -> str | None:
    """``--config`` must be known before click parses, since it decides which plugins load."""
    for index, arg in enumerate(argv):
        if arg == "--config" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    config_path = _config_path_from(args)
    try:
        settings = Settings.load(config_path=config_path)
        loaded = Plugins.load(settings)
    except ConfigError as exc:
        fail("\n".join(exc.lines), code=2)
    loaded.register_commands(cli)
    sections, _ = declared_sections(settings.plugins)
    add_plugin_flags(cli, sections)
    state = CliState(config_path=config_path, plugins=loaded, sections=sections)
    try:
        cli.main(args=args, prog_name="sollol", obj=state, standalone_mode=True)
    except ConfigError as exc:
        fail("\n".join(exc.lines), code=2)
