"""Routing strategies. Each implements ``coe.protocols.Router``; coe finds them through coe.plugins."""
