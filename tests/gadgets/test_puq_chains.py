"""The PUQ chains end to end with the shipped weights: held-out 8x scans -> mean images, their uncertainty, maps, SD."""

from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pydicom
import pytest

from gadgets.evaluate import read_series, series_in
from gadgets.items import PhaseImages, SliceContext
from gadgets.output import UNCERTAINTY_ROLE
from gadgets.puq_fit import PuqFitConfig, fit_puq_slice
from gadgets.runtime.replay import replay
from tests.chain_variants import chain_variant
from tests.conftest import dciodvfy_lines, make_raw

pytestmark = pytest.mark.slow


def meta_of(image: ismrmrd.Image) -> dict[str, str]:
    return dict(ismrmrd.Meta.deserialize(image.attribute_string))


@pytest.mark.parametrize(
    ("contrast", "chain", "role", "limit_percent"),
    [("molli", "t1_molli_puq", "T1", 15.0), ("t2prep", "t2prep_puq", "T2", 20.0)],
)
def test_puq_chain_returns_mean_images_uncertainty_map_and_sd_as_mrd_and_dicom(
    tmp_path: Path, contrast: str, chain: str, role: str, limit_percent: float
) -> None:
    """A held-out 8x scan (seed never used in training) through the shipped chain, 40 MC samples to save time."""
    raw = make_raw(tmp_path / "r8.h5", contrast=contrast, matrix=128, acceleration=8, n_coils=8, seed=4242)
    out = tmp_path / "out"
    replay(raw, chain_variant(chain, "Recon", mc_samples=40), out)
    images_file = out / "images.h5"
    assert series_in(images_file) == {1, 2, 11, 12, 16, 21, 22, 23}
    mean, mean_images = read_series(images_file, 1)
    sd, sd_images = read_series(images_file, 2)
    maps, _ = read_series(images_file, 11)
    map_sd, _ = read_series(images_file, 12)
    model_fit, model_fit_images = read_series(images_file, 16)
    assert meta_of(model_fit_images[0])["GADGETRON_DataRole"] == f"{role}ModelFit"
    kept = maps[0] > 0
    # the learned map's SD holds its distance to the model fit of the same images (and the MC spread)
    assert np.all(map_sd[0][kept] >= np.abs(maps[0] - model_fit[0])[kept] * (1 - 1e-5))
    assert mean.shape == sd.shape == (8, 128, 128)
    assert meta_of(sd_images[0])["GADGETRON_DataRole"] == UNCERTAINTY_ROLE
    assert meta_of(mean_images[0])["GADGETRON_DataRole"] == "Image"
    with h5py.File(raw, "r") as f:
        truth = f["truth"]["t1_ms" if role == "T1" else "t2_ms"][0]
        labels = f["truth"]["labels"][0]
    tissue = labels > 0
    # the uncertainty is a fraction of the signal, positive in the tissue, and larger where the error is
    relative = sd[:, tissue].mean() / mean[:, tissue].mean()
    assert 0.001 < relative < 0.5
    for matter in (1, 2):  # white and grey matter
        pixels = labels == matter
        error = np.median(np.abs(maps[0][pixels] - truth[pixels]) / truth[pixels])
        assert error < limit_percent / 100, (matter, error)
        assert np.median(map_sd[0][pixels]) > 0
        model_error = np.median(np.abs(model_fit[0][pixels] - truth[pixels]) / truth[pixels])
        assert model_error < limit_percent / 100, (matter, model_error)
    # calibrated bounds around the map; on a brain slice like the calibration's few pixels are flagged
    low, _ = read_series(images_file, 21)
    high, _ = read_series(images_file, 22)
    flags, _ = read_series(images_file, 23)
    assert np.all(low[0][kept] <= maps[0][kept])
    assert np.all(maps[0][kept] <= high[0][kept])
    assert set(np.unique(flags)) <= {0.0, 1.0}
    head = kept & (labels > 0)  # flagged at most about 1% on the calibration's brain slices (160^2; this is 128^2)
    assert flags[0][head].mean() < 0.05
    # DICOM: phase images and their uncertainty as MR images, the maps as Parametric Maps, the SR: all valid
    for series in (1, 2, 11, 12, 16, 21, 22, 23, 90):
        paths = sorted((out / "dicom").glob(f"*/series_{series:04d}/*.dcm"))
        assert len(paths) == (8 if series in (1, 2) else 1)
        assert not [line for line in dciodvfy_lines(paths[0]) if line.startswith("Error")]
    description = pydicom.dcmread(next((out / "dicom").glob("*/series_0002/*.dcm"))).SeriesDescription
    assert description.endswith("_phases_sd")


def test_puq_fit_without_mc_samples_says_what_to_change() -> None:
    item = PhaseImages(
        images=np.ones((8, 4, 4), np.complex64),
        prep_times_ms=np.arange(8.0),
        context=SliceContext(0, [], (1.0, 1.0, 1.0)),
    )
    with pytest.raises(ValueError, match="mc_dropout=true"):
        fit_puq_slice(item, PuqFitConfig(), mlp=None, device="cpu")
