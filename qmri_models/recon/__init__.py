"""Reconstruction maths: Cartesian FFT, coil maps and CG-SENSE (sigpy), NUFFT, the conjugate-gradient solver."""
