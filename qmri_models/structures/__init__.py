"""Structure-level (task-level) measurements of maps: what a radiologist reads is a number per structure.

Modules, one job each:

- ``geometry``: the size of a pixel and of a voxel, from the field of view, the matrix and the slice thickness;
- ``classify``: tissue classes of the maps themselves (a Gaussian mixture on log T1, or log T1 and log T2), with
  lesions and other outliers as pixels no class explains;
- ``rois``: regions a site supplies (a label image with names, circles of a phantom definition, the simulator's
  sphere phantom);
- ``statistics``: per structure and per sample, volume in ml and mean and median T1 or T2; across samples their mean,
  SD and coefficient of variation; the mean voxel SD inside the structure beside them.
"""
