"""``coe serve``: the OpenAI-compatible server. FastAPI, uvicorn and prometheus-client are imported
inside the command so that ``coe --help`` and ``import coe`` stay light."""

from __future__ import annotations

from typing import Annotated

import typer

from coe.cli.common import DEFAULT_CONFIG, ConfigOpt, fail, load
from coe.config.schema import ServerConfig


def _setting(help_text: str, key: str, default: str | None = None) -> str:
    """The help of a flag that overrides ``server.KEY``, with the default it falls back to (None: the
    registry's own default), so --help shows every default without a copy of the numbers."""
    shown = default if default is not None else repr(ServerConfig.model_fields[key].default)
    return f"{help_text} (server.{key} in the registry; default: {shown})"  # [..] would be rich markup


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    config: ConfigOpt = DEFAULT_CONFIG,
    host: Annotated[
        str | None,
        typer.Option(help=_setting("Address to bind: loopback unless you mean to expose it.", "host")),
    ] = None,
    port: Annotated[int | None, typer.Option(help=_setting("Port to listen on.", "port"))] = None,
    max_body_bytes: Annotated[
        int | None, typer.Option(help=_setting("Largest accepted request body.", "max_body_bytes"))
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help=_setting("Largest max_tokens a request may ask for.", "max_tokens"))
    ] = None,
    max_concurrency: Annotated[
        int | None,
        typer.Option(
            help=_setting("Concurrent calls per expert.", "max_concurrency", "its llama.cpp slots, or 8")
        ),
    ] = None,
    max_queue: Annotated[
        int | None, typer.Option(help=_setting("Requests waiting per expert before 429.", "max_queue"))
    ] = None,
    warm: Annotated[bool, typer.Option(help="Start the router and managed experts at startup.")] = True,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    allow_unauthenticated: Annotated[
        bool,
        typer.Option(
            "--allow-unauthenticated",
            help="Serve without API keys on a non-loopback --host (refused otherwise).",
        ),
    ] = False,
) -> None:
    """Serve the registry as an OpenAI-compatible API (/v1/chat/completions, /v1/models, /metrics).

    Models: `coe` (routed), `coe/expert/NAME` (pinned), `coe/category/NAME` (that category's expert).

    The answering expert is in `model` and the x-coe-expert, x-coe-category, x-coe-confidence headers.

    For the routing trace as a `coe` field: body `"coe": {"trace": true}` or header `x-coe-trace: 1`.

    Bearer keys: `server.api_keys` in the registry and COE_API_KEYS (comma-separated). Without keys
    only a loopback --host is served, unless --allow-unauthenticated. Flags override the registry's
    `server:` block.
    """
    import uvicorn

    from coe.server import ServerSettings, create_app

    cfg = load(config)
    settings = ServerSettings.from_config(
        cfg.server,
        warm=warm,
        max_body_bytes=max_body_bytes,
        max_tokens_limit=max_tokens,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        host=host,
        allow_unauthenticated=allow_unauthenticated,
    )
    if (why := settings.refusal("--host" if host else "server.host")) is not None:
        raise fail(why)
    app = create_app(cfg, settings)
    # uvicorn turns SIGINT/SIGTERM into a graceful shutdown: in-flight requests finish (up to 30 s),
    # then the lifespan stops the experts.
    uvicorn.run(
        app,
        host=settings.host,
        port=port or cfg.server.port,
        log_level=log_level,
        timeout_graceful_shutdown=30,
    )
