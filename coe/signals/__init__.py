"""Signals read from a request before its expert answers it: here the conversation-safe semantic
cache (``coe.signals.cache``). Each signal keeps its settings, runtime and evaluation in its own room."""
