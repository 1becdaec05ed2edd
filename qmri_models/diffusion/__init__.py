"""Conditional denoising diffusion, model-agnostic.

A U-Net that predicts the noise of a sample (or its velocity, or the clean sample) given a condition, its noise
schedule, the training loss and the samplers (DDPM ancestral and few-step DDIM), whole images or patch by patch.

Built on MONAI's generative networks and schedulers (``monai.networks.nets.DiffusionModelUNet``,
``monai.networks.schedulers``), behind small interfaces that know nothing of what the channels mean: the qMRI
Diffusor (maps from inversion-recovery images) and MRF-IDDPM (restored subspace images from gridded ones) both use
them unchanged. A target is scaled into [-1, 1] by its model before it reaches this package.
"""
