"""Detectors: refusals, loops, stance and metrics. Text in, scores out, no model call."""
