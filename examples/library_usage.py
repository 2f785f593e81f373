"""Use CoE as a library: route (dry run), ask, and read why an expert was chosen.

Run from the repository root (it starts the local llama.cpp experts on first ``ask``, and stops them
when the ``with`` block ends)::

    .venv/bin/python examples/library_usage.py
"""

from pathlib import Path

from coe import CoE

REGISTRY = Path(__file__).resolve().parent.parent / "experts.yaml"

with CoE.from_yaml(REGISTRY) as coe:
    # Dry run: which expert would answer, and why. No expert is started.
    for decision in coe.route(["What is 17 times 23?", "Write a haiku about autumn leaves."]):
        print(f"route -> {decision.expert} ({decision.category}): {decision.reason}")

    # Route, start the chosen expert if needed, and answer.
    answer = coe.ask("Write a Python function that reverses a string", max_tokens=128)
    print(answer.text)
    print(f"answered by {answer.expert}: {answer.trace.decision.reason}")
    print(f"timings (ms): {answer.trace.timings_ms}")
# Leaving the block closed the HTTP client and stopped every expert this CoE started.
