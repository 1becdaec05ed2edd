"""Reconstruction maths (Cartesian FFT, coil maps, CG-SENSE)."""
