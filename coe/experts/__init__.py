"""The experts CoE calls and the processes it runs itself (``serve:`` blocks): one call to one
expert, resolving model files offline, starting llama.cpp and vLLM servers, and the pool that loads,
sleeps and evicts them under a memory budget.

``calls`` (one call: the request body, the lease, the reply), ``pool`` (leases and admission),
``planner`` (pure functions: which expert to load or evict), ``engines`` / ``llamacpp`` / ``vllm``
(one launcher per engine), ``process`` (a child server), ``detached`` (processes ``coe experts up``
leaves running), ``models`` (model files) and ``footprint`` (memory estimates). Not to be confused
with ``coe.server``, the HTTP API.
"""
