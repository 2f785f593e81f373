"""The expert processes CoE runs itself (``serve:`` blocks): resolving model files offline, starting
llama.cpp and vLLM servers, and the pool that loads, sleeps and evicts them under a memory budget.

``pool`` (leases and admission), ``planner`` (pure functions: which expert to load or evict),
``engines`` / ``llamacpp`` / ``vllm`` (one launcher per engine), ``process`` (a child server),
``detached`` (processes ``coe experts up`` leaves running), ``models`` (model files) and
``footprint`` (memory estimates). Not to be confused with ``coe.server``, the HTTP API.
"""
