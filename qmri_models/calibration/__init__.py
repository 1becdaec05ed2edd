"""Calibration: distribution-free risk control of uncertainty intervals (conformalised intervals, seed 001).

``bounds``: upper confidence bounds on a mean loss in [0, 1] (Hoeffding, Bentkus, Hoeffding-Bentkus).
``intervals``: the interval families ``[value - lambda * lower_offset, value + lambda * upper_offset]`` and their
per-item miscoverage losses. ``risk_control``: the smallest scale lambda whose bound controls the risk, and the
``Calibration`` record. ``pinball``: the quantile (pinball) loss that trains quantile heads.
"""
