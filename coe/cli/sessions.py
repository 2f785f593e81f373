"""``coe sessions list|show|clear|fit``: the conversations a registry's store holds, and fitting the
continuation model that decides when a conversation changes topic."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.table import Table

from coe.cli.common import DEFAULT_CONFIG, ConfigOpt, JsonOpt, fail, load, out, print_json
from coe.clock import local_time

if TYPE_CHECKING:
    from coe.config import CoEConfig
    from coe.sessions import SessionRecord
    from coe.sessions.store import SessionStore

sessions_app = typer.Typer(help="Conversation sessions: list, show, clear, fit.", no_args_is_help=True)
SHARED_DATA = Path("../shared/data")
T = TypeVar("T")


def register(app: typer.Typer) -> None:
    app.add_typer(sessions_app, name="sessions")


def _store(cfg: CoEConfig, serve: bool) -> SessionStore:
    from coe.experts.statedir import state_dir
    from coe.sessions import open_store

    sessions = cfg.router.sessions
    if not sessions.enabled:
        raise fail("router.sessions.enabled is false: this registry keeps no sessions")
    if (sessions.store or ("sqlite" if serve else "memory")) == "memory":
        raise fail("sessions are kept in memory by the library: only a sqlite or redis store can be listed")
    return open_store(sessions, cfg, "sqlite", state_dir(cfg))


def _row(r: SessionRecord) -> dict[str, object]:
    return r.model_dump(exclude={"vector", "space"})


@sessions_app.command("list")
def list_sessions(
    config: ConfigOpt = DEFAULT_CONFIG,
    limit: Annotated[int, typer.Option(help="At most this many, most recent first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The sessions `coe serve` keeps for this registry (its store: sqlite by default, or redis)."""
    from coe.sessions import StoreUnavailable

    store = _store(load(config), serve=True)
    try:
        records = asyncio.run(_close_after(store, store.list(limit)))
    except StoreUnavailable as exc:
        raise fail(exc) from None
    if as_json:
        print_json([_row(r) for r in records])
        return
    table = Table("session", "expert", "category", "turns", "last turn")
    for r in records:
        table.add_row(r.id, r.expert, r.category or "-", str(r.turns), local_time(r.updated))
    out.print(table)


@sessions_app.command("show")
def show_session(
    session: Annotated[str, typer.Argument(help="The session id (x-coe-session).")],
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """One session as JSON; exit 1 when the store does not hold it."""
    from coe.sessions import StoreUnavailable

    store = _store(load(config), serve=True)
    try:
        record = asyncio.run(_close_after(store, store.get(session, None)))
    except StoreUnavailable as exc:
        raise fail(exc) from None
    if record is None:
        raise fail(f"no session {session!r} (never seen, or expired)")
    print_json(_row(record))


@sessions_app.command("clear")
def clear_sessions(
    session: Annotated[str | None, typer.Argument(help="One session to forget (default: all).")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Forget one session, or all of them."""
    from coe.sessions import StoreUnavailable

    store = _store(load(config), serve=True)
    try:
        if session is not None:
            if not asyncio.run(_close_after(store, store.delete(session))):
                raise fail(f"no session {session!r}")
            out.print(f"cleared session {session}")
            return
        n = asyncio.run(_close_after(store, store.clear()))
    except StoreUnavailable as exc:
        raise fail(exc) from None
    out.print(f"cleared {n} sessions")


@sessions_app.command("fit")
def fit_sessions(
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The continuation model to write (.npz).")],
    conversations: Annotated[
        Path, typer.Option(help="Two-turn conversations, MT-Bench's shape (question_id, turns).")
    ] = SHARED_DATA / "mt_bench" / "question.jsonl",
    standalone: Annotated[
        list[Path] | None, typer.Option(help="Standalone prompts (Vicuna-Bench turns, Arena-Hard prompt).")
    ] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    max_followup_switch: Annotated[
        float, typer.Option(help="Fitted thresholds keep follow-up switches at most this.")
    ] = 0.05,
    as_json: JsonOpt = False,
) -> None:
    """Fit the continuation model and the switch thresholds for this registry's encoder and router."""
    from coe.encoding.embedder import shared_embedder
    from coe.errors import CoEError
    from coe.orchestrator import CoE
    from coe.sessions.training import fit, read_conversations, read_prompts

    cfg = load(config)
    files = standalone if standalone is not None else [
        SHARED_DATA / "vicuna_bench" / "question.jsonl",
        SHARED_DATA / "arena_hard" / "arena-hard-v0.1_question.jsonl",
        SHARED_DATA / "arena_hard" / "arena-hard-v2.0_question.jsonl",
    ]  # fmt: skip
    try:
        convs = read_conversations(conversations)
        prompts = [p for f in files for p in read_prompts(f)]
    except (OSError, CoEError) as exc:
        raise fail(exc) from None
    coe = CoE(cfg)
    routes = {name: c.expert for name, c in cfg.router.category_routes().items()}
    try:
        model, report = fit(
            convs, prompts, shared_embedder(cfg.embedder, cfg.base_dir), coe.route, routes,
            max_followup_switch=max_followup_switch,
        )  # fmt: skip
    except CoEError as exc:
        raise fail(exc) from None
    model.save(out_file)
    summary = {
        "model": str(out_file),
        "space": model.header.space,
        "switch_confidence": model.header.switch_confidence,
        "switch_margin": model.header.switch_margin,
        **{part: m.__dict__ for part, m in report.items()},
    }
    if as_json:
        print_json(summary)
        return
    out.print(
        f"wrote {out_file} ({model.header.space}): switch_confidence {model.header.switch_confidence:g}, "
        f"switch_margin {model.header.switch_margin:g}",
        highlight=False,
    )
    for part, m in report.items():
        out.print(
            f"  {part}: follow-up switch rate {m.followup_switch_rate:.3f} over {m.followups}, "
            f"topic-switch recall {m.topic_switch_recall:.3f} over {m.topic_pairs} pairs",
            highlight=False,
        )
    out.print("use it as router.sessions.model", highlight=False)


async def _close_after(store: SessionStore, call: Awaitable[T]) -> T:
    try:
        return await call
    finally:
        await store.aclose()
