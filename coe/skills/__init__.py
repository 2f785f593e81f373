"""Skill-based recruitment (Symbolic-MoE, arXiv 2503.05641) and the pieces around it.

``profile``: the profile file ``coe profile`` writes and the skills router reads; ``recruit``: the
recruitment arithmetic (numpy, no I/O); ``keywords``: skills of a prompt from an annotator expert or
from the nearest vocabulary entries; ``vocab``: building a skill vocabulary offline; ``grading`` and
``qa``: validation data and graders; ``build``: running experts over validation data into a profile.
Nothing here is imported by ``import coe``.
"""
