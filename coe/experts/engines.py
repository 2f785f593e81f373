"""From an expert's ``serve:`` block to a server process ready to spawn: the one place that knows
which engine module runs which ``engine``. ``endpoint:`` experts are external and never get here."""

from __future__ import annotations

import os
from pathlib import Path

from coe.config import CoEConfig, LlamaCppServe
from coe.experts.groups import ProcessGroups
from coe.experts.process import ServerProcess


def prepare_server(name: str, config: CoEConfig, log_path: Path) -> ServerProcess:
    """Resolve the model and build the command (may take a while: model files are hash-checked).
    ``name`` is a process: an expert's, or a group's that loads every adapter of the group."""
    spec = config.experts[name].serve
    group = ProcessGroups(config).group(name)
    if isinstance(spec, LlamaCppServe):
        from coe.experts.llamacpp import llamacpp_server

        threads = spec.threads or default_threads(config)
        return llamacpp_server(name, spec, config, log_path, threads=threads, group=group)
    from coe.experts.vllm import vllm_server

    assert spec is not None, f"{name} is not a managed expert"
    return vllm_server(name, spec, config, log_path, group=group)


def default_threads(config: CoEConfig) -> int:
    """Share the cores among the managed processes: on 2 cores, two servers get one thread each (a
    group of adapter experts is one process)."""
    managed = ProcessGroups(config).hosts(n for n, e in config.experts.items() if e.serve is not None)
    return max(1, (os.cpu_count() or 1) // max(1, len(managed)))
