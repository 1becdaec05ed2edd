"""MR fingerprinting science: the FISP-MRF schedule, its EPG simulation, the dictionary and its SVD subspace.

Modules, one job each:

- ``schedule``, ``epg``, ``dictionary``, ``subspace``: the train, its simulation, the atoms and their basis;
- ``subspace_accumulator``: the streaming state of a spiral slice (readouts gridded into the subspace as they come);
- ``subspace_operator``: the slice's subspace encoding operator (NUFFT, sensitivities, normal operator);
- ``subspace_calibration``: coil sensitivities from the slice's own spiral centre;
- ``subspace_algorithms``: SVDMRF, low-rank conjugate gradient (``qmri_models.recon.conjugate_gradient``), ADMM;
- ``matching``: dictionary matching, exhaustive and clustered;
- ``recipe``: the whole reconstruction as the gadgets run it and the bench measures it.
"""

from qmri_models.mrf.dictionary import MrfDictionary, build_dictionary, t1_t2_grid
from qmri_models.mrf.epg import fisp_fingerprints
from qmri_models.mrf.schedule import FispSchedule, jiang_schedule
from qmri_models.mrf.subspace import from_subspace, svd_basis, to_subspace

__all__ = [
    "FispSchedule",
    "MrfDictionary",
    "build_dictionary",
    "fisp_fingerprints",
    "from_subspace",
    "jiang_schedule",
    "svd_basis",
    "t1_t2_grid",
    "to_subspace",
]
