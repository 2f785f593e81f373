"""A vLLM expert: ``vllm serve MODEL --enable-sleep-mode`` on a loopback port (GPU machines only).

Why sleep mode: a restart of a vLLM server costs tens of seconds (CUDA init, weight load, graph
capture); level-1 sleep moves the weights to host RAM and drops the KV cache, and waking copies them
back in about a second. So when the pool evicts a vLLM expert it puts it to sleep instead of stopping
it, and its GPU memory (``gpu_memory_utilization`` of the card) is free for another expert.

The HTTP contract (checked against vLLM 0.33.0's ``vllm/entrypoints/serve/dev/sleep/api_router.py``):

* ``POST /sleep?level=1`` -> 200 ``{"status": "sleeping", "level": 1}``
* ``POST /wake_up`` -> 200 ``{"status": "awake", ...}``
* ``GET /is_sleeping`` -> 200 ``{"is_sleeping": bool}``
* ``GET /health`` -> 200 once the engine runs

These endpoints exist only when the server runs with ``VLLM_SERVER_DEV_MODE=1``, which this module
sets. Older vLLM versions answered /sleep and /wake_up before the engine had finished, so both calls
here poll /is_sleeping until the state really changed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from coe.config import CoEConfig, VllmServe
from coe.errors import ExpertError
from coe.experts.groups import Group
from coe.experts.models import adapter_path
from coe.experts.process import ServerProcess, free_port

SLEEP_LEVEL = 1  # weights to host RAM, KV cache dropped; level 2 would drop the weights too
# The ranks vLLM's --max-lora-rank accepts (vllm/config/lora.py); the flag takes the next one up.
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def find_vllm(executable: str) -> str:
    """``serve.executable`` as a path, else on PATH, else next to this Python (a venv's bin/)."""
    if os.sep in executable:
        if not Path(executable).is_file():
            raise FileNotFoundError(f"serve.executable {executable} does not exist")
        return executable
    found = shutil.which(executable) or shutil.which(executable, path=str(Path(sys.executable).parent))
    if found is None:
        raise FileNotFoundError(
            f"{executable!r} not found: install vLLM on a machine with an NVIDIA GPU "
            "(pip install 'coe[vllm]') or set serve.executable"
        )
    return found


def build_vllm_command(
    executable: str,
    spec: VllmServe,
    *,
    alias: str | Sequence[str],
    port: int,
    loras: Mapping[str, Path] | None = None,
    max_lora_rank: int | None = None,
) -> list[str]:
    """``alias``: the base's served model names; ``loras``: adapters by the model name a request
    selects them with (vLLM's multi-LoRA: ``--enable-lora --lora-modules NAME=PATH``), all resident
    at once (``--max-loras``)."""
    names = [alias] if isinstance(alias, str) else list(alias)
    cmd = [
        executable, "serve", spec.model,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--served-model-name", *names,
        "--gpu-memory-utilization", f"{spec.gpu_memory_utilization:g}",
        "--max-num-seqs", str(spec.max_num_seqs),
        "--enable-sleep-mode",
    ]  # fmt: skip
    if spec.max_model_len is not None:
        cmd += ["--max-model-len", str(spec.max_model_len)]
    if spec.dtype is not None:
        cmd += ["--dtype", spec.dtype]
    if loras:
        cmd += ["--enable-lora", "--lora-modules", *(f"{n}={p}" for n, p in loras.items())]
        cmd += ["--max-loras", str(len(loras))]
        if max_lora_rank is not None:
            cmd += ["--max-lora-rank", str(max_lora_rank)]
    return cmd + list(spec.extra_args)


class VllmServer(ServerProcess):
    can_sleep = True
    program = "vllm serve"

    async def sleep(self) -> None:
        await self._switch("/sleep", {"level": str(SLEEP_LEVEL)}, sleeping=True)

    async def wake(self) -> None:
        await self._switch("/wake_up", {}, sleeping=False)

    async def is_sleeping(self) -> bool:
        async with httpx.AsyncClient(trust_env=False) as client:
            return await self._is_sleeping(client)

    async def _is_sleeping(self, client: httpx.AsyncClient) -> bool:
        resp = await client.get(f"{self.root}/is_sleeping", timeout=10.0)
        self._check(resp, "/is_sleeping")
        return bool(resp.json()["is_sleeping"])

    async def _switch(
        self, path: str, params: dict[str, str], *, sleeping: bool, timeout_s: float = 120.0
    ) -> None:
        try:
            async with httpx.AsyncClient(trust_env=False) as client:  # one connection for the polls too
                resp = await client.post(f"{self.root}{path}", params=params, timeout=timeout_s)
                self._check(resp, path)
                deadline = time.monotonic() + timeout_s
                while await self._is_sleeping(client) != sleeping:
                    if time.monotonic() > deadline:
                        raise ExpertError(self.expert, f"{path} answered but the server did not change state")
                    await asyncio.sleep(0.05)
        except httpx.TransportError as exc:
            raise ExpertError(self.expert, f"{path} failed: cannot reach {self.root}: {exc}") from None

    def _check(self, resp: httpx.Response, path: str) -> None:
        if resp.status_code == 404:
            raise ExpertError(
                self.expert,
                f"{self.root}{path} not found: the server must run with VLLM_SERVER_DEV_MODE=1 and "
                "--enable-sleep-mode (CoE sets both for the vLLM experts it starts)",
            )
        if resp.status_code != 200:
            raise ExpertError(
                self.expert, f"HTTP {resp.status_code} from {self.root}{path}: {resp.text[:200]}"
            )


def peft_config(path: Path) -> dict[str, Any]:
    """A PEFT adapter folder's ``adapter_config.json`` ({} where it has none or it does not parse)."""
    try:
        data = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def vllm_max_rank(paths: list[Path]) -> int | None:
    """The ``--max-lora-rank`` these adapters need (vLLM's default, 16, where none says its rank)."""
    ranks = [int(r) for p in paths if isinstance(r := peft_config(p).get("r"), int)]
    if not ranks:
        return None
    need = max(ranks)
    return next((r for r in VLLM_RANKS if r >= need), need)


def vllm_server(
    name: str, spec: VllmServe, config: CoEConfig, log_path: Path, *, group: Group | None = None
) -> VllmServer:
    """Prepare the process; nothing runs yet. Sleep endpoints need VLLM_SERVER_DEV_MODE=1. A group's
    process loads each adapter under its expert's model name; its experts without one are the base's
    served names (the base model's own name where every expert has an adapter)."""
    port = free_port()
    model_name = {n: config.experts[n].model or n for n in (group.experts if group else [name])}
    loras: dict[str, Path] = {}
    base_names: list[str] = []
    for member, alias in model_name.items():
        lora = config.experts[member].serve.lora  # type: ignore[union-attr]
        if lora is not None:
            loras[alias] = adapter_path(lora, config.base_dir)
        else:
            base_names.append(alias)
    command = build_vllm_command(
        find_vllm(spec.executable),
        spec,
        alias=base_names or [spec.model],
        port=port,
        loras=loras,
        max_lora_rank=vllm_max_rank(list(loras.values())),
    )
    return VllmServer(name, command, port, log_path, env={"VLLM_SERVER_DEV_MODE": "1", **spec.env})


def gpu_total_gb() -> float | None:
    """Memory of the first visible GPU from nvidia-smi, or None where there is none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    device = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", device],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        return float(out.split()[0]) / 1024
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
