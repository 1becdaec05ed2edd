"""Simulated scans with known truth: anatomy, tissue parameters, coils, masks, raw-file writer."""
