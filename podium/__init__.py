"""Podium command line: `podium train|models|serve|rollout`."""
