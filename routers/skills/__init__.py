"""Skill-based recruitment (Symbolic-MoE, arXiv 2503.05641): recruit the experts whose measured skills
match the keywords a prompt needs, and let an aggregator merge their answers.

The room: ``router`` (the runtime ``SkillsRouter``), ``profile`` (the profile file ``coe profile``
writes and the router reads), ``recruit`` (the recruitment arithmetic: numpy, no I/O), ``keywords``
(skills of a prompt from an annotator expert or the nearest vocabulary entries), ``vocab`` (a skill
vocabulary built offline), ``text`` (what of a prompt names its skills), ``qa`` (validation data and
graders), ``build`` (running experts over validation data into a profile) and ``evaluation``
(``coe eval recruit``: recruitment replayed on stored outcomes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coe.plugins import lazy_exports

if TYPE_CHECKING:
    from routers.skills.router import SkillsRouter

__all__ = ["SkillsRouter"]
# The runtime imports numpy and the encoder; reading a registry needs only the settings model.
__getattr__ = lazy_exports(__name__, {"SkillsRouter": "routers.skills.router"})
