"""MR fingerprinting science: the FISP-MRF schedule, its EPG simulation, the dictionary and its SVD subspace."""

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
