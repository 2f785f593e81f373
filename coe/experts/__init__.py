"""The experts CoE calls and the processes it runs itself (``serve:`` blocks): one call to one
expert, resolving model files offline, starting llama.cpp and vLLM servers, and the pool that loads,
sleeps and evicts them under a memory budget.

``calls`` (one call: the request body, the lease, the reply), ``pool`` (the composition the engine
holds), ``scheduler`` (leases and admission under the memory budget), ``budget`` (footprints and what
fits), ``supervisor`` (our processes, crashes, the restart limit), ``planner`` (pure functions: which
expert to load or evict), ``engines`` / ``llamacpp`` / ``vllm`` (one launcher per engine), ``process``
(one engine process), ``detached`` (processes ``coe experts up`` leaves running), ``statedir`` (where
logs, sessions, cache and traces are kept), ``models`` (model files) and ``footprint`` (memory
estimates). Not to be confused
with ``coe.server``, the HTTP API.
"""
