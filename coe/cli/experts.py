"""``coe experts list|up|down|status``: the experts of a registry and their processes."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from rich.table import Table

from coe.cli.common import DEFAULT_CONFIG, ConfigOpt, JsonOpt, fail, load, out, print_json
from coe.errors import CoEError

experts_app = typer.Typer(help="Manage the experts of a registry.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(experts_app, name="experts")


@experts_app.command("list")
def experts_list(config: ConfigOpt = DEFAULT_CONFIG, as_json: JsonOpt = False) -> None:
    """The experts of the registry, where they live, which process serves them (LoRA adapters of one
    base share one) and which categories map to them."""
    from coe.experts.groups import ProcessGroups

    cfg = load(config)
    groups = ProcessGroups(cfg)
    rows: list[dict[str, Any]] = []
    for name, e in cfg.experts.items():
        cats = [c for c, spec in cfg.router.category_routes().items() if spec.expert == name]
        if cfg.router.fallback_expert() == name:
            cats.append("(fallback)")
        where = e.serve.where if e.serve else (e.endpoint or e.provider or "")
        lora = e.serve.lora if e.serve else None
        rows.append({"name": name, "kind": e.kind, "model": e.model or name, "where": where,
                     "lora": lora, "process": groups.describe(name), "params_b": e.params_b,
                     "categories": cats})  # fmt: skip
    if as_json:
        print_json(rows)
        return
    table = Table("expert", "kind", "model", "where", "lora", "process", "params (B)", "categories")
    for r in rows:
        table.add_row(
            r["name"],
            r["kind"],
            r["model"],
            r["where"],
            r["lora"] or "-",
            r["process"],
            str(r["params_b"] or "-"),
            ", ".join(r["categories"]),
        )
    out.print(table)


@experts_app.command("up")
def experts_up(
    names: Annotated[
        list[str] | None, typer.Argument(help="Experts to start (default: all managed).")
    ] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Start managed experts in the background; later `coe ask` calls reuse them."""
    from coe.experts.pool import ExpertPool, ExpertStatus

    pool = ExpertPool(load(config))

    async def up() -> list[ExpertStatus]:
        skipped = await pool.detached.up(names)
        statuses = await pool.status()
        for s in statuses:
            s.detail = skipped.get(s.name, s.detail)  # why one was left cold
        return statuses

    try:
        statuses = asyncio.run(up())
    except CoEError as exc:
        raise fail(exc) from None
    _show_status(statuses)


@experts_app.command("down")
def experts_down(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Stop the experts that `coe experts up` started."""
    from coe.experts.pool import ExpertPool

    stopped = ExpertPool(load(config)).detached.down()
    out.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@experts_app.command("status")
def experts_status(config: ConfigOpt = DEFAULT_CONFIG, as_json: JsonOpt = False) -> None:
    """Which experts are running, where, and which are reachable."""
    from coe.experts.pool import ExpertPool

    statuses = asyncio.run(ExpertPool(load(config)).status())
    if as_json:
        print_json([s.__dict__ for s in statuses])
        return
    _show_status(statuses)


def _show_status(statuses: list[Any]) -> None:
    table = Table("expert", "kind", "state", "url", "pid", "detail")
    for s in statuses:
        table.add_row(s.name, s.kind, s.state, s.url or "-", str(s.pid or "-"), s.detail)
    out.print(table)
