"""Pixelwise parameter fitting: batched Levenberg-Marquardt and whole-slice maps with their SD."""
