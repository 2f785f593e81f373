"""Signals: checks that run on a request before it is routed, each giving a verdict with evidence for
the trace, and an action the registry chooses (``signals:`` in experts.yaml).

The ``signals:`` block's settings are ``coe.config.signals``. Here: ``cache/`` (the conversation-safe
semantic cache: runtime, store, evaluation), ``verdicts`` (what a check found, as the trace shows
it), ``stage`` (runs the checks and applies the actions, for the orchestrator), ``guard/`` (the jailbreak
and prompt-injection classifier: features, artefact, training), ``pii`` (Presidio's pattern
recognizers and redaction) and ``evaluation`` (offline: `coe eval guard|pii`).

Nothing here imports numpy, the encoder or Presidio at module level: a registry without a
``signals:`` block pays nothing, and one with it pays on the first request.
"""
