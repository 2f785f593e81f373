"""Routing strategies, one package each (``category``, ``cost``, ``skills``): settings, runtime,
training and evaluation side by side. Each router implements ``coe.protocols.Router``; coe finds it by
name through ``coe.plugins``."""

from coe.plugins import install_moved_modules_hint

install_moved_modules_hint()  # `import routers.cost_model` (0.1) names where it moved
