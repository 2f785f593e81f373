"""Answer combiners. Each implements ``coe.protocols.Aggregator``; coe finds them through coe.plugins."""
