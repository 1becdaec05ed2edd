"""FISP-MRF schedule, (T1, T2) grid, SVD subspace and the cached dictionary."""

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from qmri_models.mrf import dictionary as dictionary_module
from qmri_models.mrf.dictionary import (
    DEFAULT_STEP_PERCENT,
    PAPER_STEP_PERCENT,
    MrfDictionary,
    build_dictionary,
    default_cache_dir,
    dictionary_key,
    t1_t2_grid,
)
from qmri_models.mrf.epg import fisp_fingerprints
from qmri_models.mrf.schedule import FispSchedule, jiang_schedule
from qmri_models.mrf.subspace import from_subspace, svd_basis, to_subspace

SMALL_STEP_PERCENT = 12.0
"""A coarse grid (about 1,100 atoms) for the cache tests."""


@pytest.fixture(scope="module")
def default_dictionary(tmp_path_factory: pytest.TempPathFactory) -> MrfDictionary:
    """The default dictionary (default schedule and grid, rank 5), built once on the CPU."""
    return build_dictionary(jiang_schedule(), device="cpu", cache_dir=tmp_path_factory.mktemp("mrf_cache"))


def small_build(schedule: FispSchedule, cache_dir: Path) -> MrfDictionary:
    return build_dictionary(schedule, grid=t1_t2_grid(SMALL_STEP_PERCENT), device="cpu", cache_dir=cache_dir)


# --- schedule ---------------------------------------------------------------------------------------------------


def test_jiang_schedule_shape_ranges_and_smooth_tr() -> None:
    schedule = jiang_schedule()
    flips, trs = np.asarray(schedule.flip_angles_deg), np.asarray(schedule.tr_ms)
    assert schedule.n_frames == 1000
    assert flips.min() == pytest.approx(5.0)
    assert flips.max() == pytest.approx(70.0, abs=0.01)
    assert trs.min() == 11.5
    assert trs.max() == 14.5
    assert np.abs(np.diff(trs)).max() < 0.5  # smooth noise, not white
    lobe_peaks = flips.reshape(5, 200).max(axis=1)
    np.testing.assert_allclose(lobe_peaks, (55.0, 70.0, 35.0, 62.0, 45.0), atol=0.01)
    np.testing.assert_array_equal(flips.reshape(5, 200)[:, -10:], 5.0)  # the gaps
    assert (schedule.te_ms, schedule.ti_ms) == (1.908, 18.0)


def test_jiang_schedule_is_seeded() -> None:
    assert jiang_schedule(seed=3) == jiang_schedule(seed=3)
    assert jiang_schedule(seed=3).tr_ms != jiang_schedule(seed=4).tr_ms
    assert jiang_schedule(seed=3).flip_angles_deg == jiang_schedule(seed=4).flip_angles_deg
    assert set(jiang_schedule(50, tr_range_ms=(10.0, 10.0)).tr_ms) == {10.0}


def test_schedule_json_round_trip_is_exact() -> None:
    schedule = jiang_schedule(300, seed=7, te_ms=2.0 / 3.0)
    text = json.dumps(schedule.to_dict())
    back = FispSchedule.from_dict(json.loads(text))
    assert back == schedule
    assert back.te_ms == 2.0 / 3.0
    assert FispSchedule.from_json(schedule.to_json()) == schedule
    assert back.key() == schedule.key()


def test_schedule_key_tracks_content() -> None:
    schedule = jiang_schedule(100)
    nudged_tr = list(schedule.tr_ms)
    nudged_tr[50] = math.nextafter(nudged_tr[50], math.inf)
    nudged = FispSchedule(schedule.flip_angles_deg, nudged_tr, schedule.te_ms, schedule.ti_ms)
    assert len(schedule.key()) == 64
    assert schedule.key() == jiang_schedule(100).key()
    assert nudged.key() != schedule.key()
    assert schedule.truncated(99).key() != schedule.key()


def test_truncated_keeps_the_first_frames() -> None:
    schedule = jiang_schedule()
    short = schedule.truncated(200)
    assert short.n_frames == 200
    assert short.flip_angles_deg == schedule.flip_angles_deg[:200]
    assert short.tr_ms == schedule.tr_ms[:200]
    assert (short.te_ms, short.ti_ms) == (schedule.te_ms, schedule.ti_ms)
    with pytest.raises(ValueError, match="n_frames must be in"):
        schedule.truncated(1001)


@pytest.mark.parametrize(
    ("flips", "trs", "te_ms", "ti_ms", "message"),
    [
        ([], [], 1.0, 0.0, "at least one frame"),
        ([10.0, 20.0], [10.0], 1.0, 0.0, "tr_ms has 1 frames"),
        ([10.0, 200.0], [10.0, 10.0], 1.0, 0.0, "200.0"),
        ([10.0], [0.0], 0.0, 0.0, "positive"),
        ([10.0], [10.0], 10.0, 0.0, "te_ms"),
        ([10.0], [10.0], 1.0, -1.0, "ti_ms"),
    ],
)
def test_bad_schedules_are_refused(flips: list, trs: list, te_ms: float, ti_ms: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FispSchedule(flips, trs, te_ms, ti_ms)


def test_schedule_dict_with_wrong_keys_is_refused() -> None:
    values = jiang_schedule(10).to_dict()
    with pytest.raises(ValueError, match=r"unknown keys \['tr'\]"):
        FispSchedule.from_dict({**values, "tr": 1.0})
    del values["ti_ms"]
    with pytest.raises(ValueError, match=r"missing keys \['ti_ms'\]"):
        FispSchedule.from_dict(values)


# --- grid -------------------------------------------------------------------------------------------------------


def test_default_grid_bounds_order_and_size() -> None:
    t1, t2 = t1_t2_grid()
    assert t1.dtype == torch.float64
    assert t1.numel() == 17_553
    assert bool((t2 < t1).all())
    assert t1.min().item() == pytest.approx(100.0)
    assert t1.max().item() == pytest.approx(4000.0)
    assert t2.min().item() == pytest.approx(10.0)
    assert t2.max().item() == pytest.approx(2000.0)
    for axis in (t1.unique(), t2.unique()):
        ratios = axis[1:] / axis[:-1]
        assert ratios.max().item() <= 1.0 + DEFAULT_STEP_PERCENT / 100.0
        torch.testing.assert_close(ratios, torch.full_like(ratios, ratios[0].item()))  # log-spaced


def test_paper_grid_is_about_95k_atoms() -> None:
    assert 90_000 <= t1_t2_grid(PAPER_STEP_PERCENT)[0].numel() <= 100_000


def test_bad_grid_is_refused() -> None:
    with pytest.raises(ValueError, match="step_percent"):
        t1_t2_grid(0.0)
    with pytest.raises(ValueError, match="t2_range_ms"):
        t1_t2_grid(t2_range_ms=(100.0, 10.0))


# --- SVD subspace -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_dictionary_keeps_99_percent_at_rank_5(default_dictionary: MrfDictionary) -> None:
    # Measured: 0.99825 of the energy at K = 5 on the 17,553 atoms.
    d = default_dictionary
    assert d.n_atoms == 17_553
    assert d.fingerprints.shape == (17_553, 1000)
    assert d.fingerprints.dtype == torch.complex64
    assert d.basis.shape == (1000, 5)
    assert d.basis.dtype == torch.complex64
    assert d.energy_kept >= 0.99
    torch.testing.assert_close(torch.linalg.vector_norm(d.fingerprints, dim=-1), torch.ones(d.n_atoms))


@pytest.mark.slow
def test_projection_round_trip_keeps_energy_kept(default_dictionary: MrfDictionary) -> None:
    d = default_dictionary
    torch.testing.assert_close(d.basis.mH @ d.basis, torch.eye(5, dtype=torch.complex64), atol=1e-5, rtol=0.0)
    coefficients = d.compressed
    torch.testing.assert_close(coefficients, d.fingerprints @ d.basis.conj())
    torch.testing.assert_close(to_subspace(d.fingerprints[7], d.basis), d.basis.mH @ d.fingerprints[7])
    projected = from_subspace(coefficients, d.basis)
    torch.testing.assert_close(projected[7], d.basis @ coefficients[7])
    kept = torch.linalg.vector_norm(projected, dim=-1) ** 2
    assert kept.mean().item() == pytest.approx(d.energy_kept, abs=1e-4)
    torch.testing.assert_close(to_subspace(projected, d.basis), coefficients, atol=1e-5, rtol=0.0)  # a projection
    residual = d.fingerprints - projected
    assert (torch.linalg.vector_norm(residual, dim=-1) ** 2).mean().item() == pytest.approx(1 - d.energy_kept, abs=1e-4)


def test_svd_basis_of_complex_atoms_ignores_their_phase() -> None:
    schedule = jiang_schedule(200)
    t1, t2 = t1_t2_grid(SMALL_STEP_PERCENT)
    real = fisp_fingerprints(t1, t2, schedule)
    phase = torch.exp(1j * torch.linspace(0.0, 6.0, t1.numel(), dtype=torch.float64))[:, None]
    basis_real, kept_real = svd_basis(real, 4)
    basis_complex, kept_complex = svd_basis(real * phase, 4)
    assert kept_complex == pytest.approx(kept_real, rel=1e-9)
    torch.testing.assert_close(basis_complex, basis_real, atol=1e-8, rtol=0.0)  # the pivot fixes the sign
    assert basis_real.dtype == torch.complex128
    with pytest.raises(ValueError, match="rank must be in"):
        svd_basis(real, 201)


@pytest.mark.slow
def test_pd_is_the_matched_inner_product_over_the_norm(default_dictionary: MrfDictionary) -> None:
    d = default_dictionary
    atom = 1234
    raw = fisp_fingerprints(d.t1_ms[atom : atom + 1].float(), d.t2_ms[atom : atom + 1].float(), d.schedule)[0]
    measured = 3.5 * torch.exp(torch.tensor(0.7j)) * raw
    pd = (d.fingerprints[atom].conj() @ measured).abs() / d.norms[atom]
    assert pd.item() == pytest.approx(3.5, rel=1e-5)


# --- cache ------------------------------------------------------------------------------------------------------


def test_second_build_loads_identical_arrays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    schedule = jiang_schedule(200)
    first = small_build(schedule, tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def no_simulation(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("the cached dictionary was simulated again")

    monkeypatch.setattr(dictionary_module, "fisp_fingerprints", no_simulation)
    second = small_build(schedule, tmp_path)
    assert second.schedule == schedule
    for name in ("t1_ms", "t2_ms", "fingerprints", "norms", "basis"):
        assert torch.equal(getattr(second, name), getattr(first, name)), name
    assert (second.energy_kept, second.n_states) == (first.energy_kept, first.n_states)


def test_other_schedule_rank_or_grid_gets_its_own_key(tmp_path: Path) -> None:
    schedule = jiang_schedule(200)
    t1, t2 = t1_t2_grid(SMALL_STEP_PERCENT)
    key = dictionary_key(schedule, t1, t2, n_states=25, rank=5)
    assert key == dictionary_key(schedule, t1.clone(), t2.clone(), n_states=25, rank=5)
    assert key != dictionary_key(jiang_schedule(200, seed=1), t1, t2, n_states=25, rank=5)
    assert key != dictionary_key(schedule, t1, t2, n_states=25, rank=6)
    assert key != dictionary_key(schedule, t1, t2, n_states=30, rank=5)
    assert key != dictionary_key(schedule, t1[1:], t2[1:], n_states=25, rank=5)
    small_build(schedule, tmp_path)
    small_build(jiang_schedule(200, seed=1), tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def corrupt(path: Path, how: str) -> None:
    if how == "garbage":
        path.write_bytes(b"not a zip file")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # a readable file whose arrays disagree: one atom fewer
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        arrays["fingerprints"] = arrays["fingerprints"][1:]
        with path.open("wb") as handle:
            np.savez(handle, **arrays)


@pytest.mark.parametrize("how", ["garbage", "truncated", "inconsistent"])
def test_corrupt_cache_file_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str) -> None:
    schedule = jiang_schedule(200)
    reference = small_build(schedule, tmp_path)
    (path,) = tmp_path.glob("*.npz")
    corrupt(path, how)
    with caplog.at_level(logging.INFO, logger="qmri_models.mrf.dictionary"):
        rebuilt = small_build(schedule, tmp_path)
    assert "unreadable" in caplog.text
    assert "built MRF dictionary" in caplog.text
    assert torch.equal(rebuilt.fingerprints, reference.fingerprints)
    assert torch.equal(small_build(schedule, tmp_path).fingerprints, reference.fingerprints)  # rewritten, loadable
    assert not list(tmp_path.glob("*.part"))


def test_stale_cache_file_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    schedule, other = jiang_schedule(200), jiang_schedule(200, seed=1)
    small_build(other, tmp_path)
    (other_path,) = tmp_path.glob("*.npz")
    t1, t2 = t1_t2_grid(SMALL_STEP_PERCENT)
    key = dictionary_key(schedule, t1, t2, n_states=25, rank=5)
    other_path.rename(tmp_path / f"fisp_mrf_{key[:32]}.npz")
    with caplog.at_level(logging.WARNING, logger="qmri_models.mrf.dictionary"):
        rebuilt = small_build(schedule, tmp_path)
    assert "stale" in caplog.text
    assert rebuilt.schedule == schedule


def test_cache_keeps_the_most_recently_used_dictionaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that sends a new schedule in every header cannot fill the disk: the cache keeps the last few."""
    monkeypatch.setattr(dictionary_module, "CACHE_MAX_FILES", 2)
    grid = t1_t2_grid(30.0)
    schedules = [jiang_schedule(20, seed=seed) for seed in range(3)]
    build_dictionary(schedules[0], grid=grid, device="cpu", cache_dir=tmp_path)
    (first,) = tmp_path.glob("*.npz")
    build_dictionary(schedules[1], grid=grid, device="cpu", cache_dir=tmp_path)
    os.utime(first, ns=(0, 0))  # the oldest file; loading it makes it the most recently used
    build_dictionary(schedules[0], grid=grid, device="cpu", cache_dir=tmp_path)
    build_dictionary(schedules[2], grid=grid, device="cpu", cache_dir=tmp_path)
    kept = {p.name for p in tmp_path.glob("*.npz")}
    assert len(kept) == 2
    assert first.name in kept


def test_cache_can_be_switched_off(tmp_path: Path) -> None:
    build_dictionary(jiang_schedule(50), grid=t1_t2_grid(30.0), device="cpu", cache=False, cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_default_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QMRI_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "mrf"
    monkeypatch.delenv("QMRI_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "qmri-gadgets" / "mrf"


def test_bad_grid_or_rank_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="grid must be"):
        build_dictionary(jiang_schedule(10), grid=(torch.ones(3), torch.ones(2)), device="cpu", cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"rank must be in \[1, 10\]"):
        build_dictionary(jiang_schedule(10), grid=t1_t2_grid(30.0), rank=11, device="cpu", cache_dir=tmp_path)


def test_zero_flip_schedule_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="all-zero fingerprint"):
        build_dictionary(FispSchedule([0.0] * 5, [10.0] * 5, 1.0, 10.0), grid=t1_t2_grid(30.0), cache_dir=tmp_path)


@pytest.mark.cuda
def test_cuda_build_matches_cpu(tmp_path: Path) -> None:
    schedule = jiang_schedule(300)
    cpu = small_build(schedule, tmp_path / "cpu")
    gpu = build_dictionary(schedule, grid=t1_t2_grid(SMALL_STEP_PERCENT), device="cuda", cache_dir=tmp_path / "gpu")
    assert gpu.fingerprints.device.type == "cuda"
    torch.testing.assert_close(gpu.fingerprints.cpu(), cpu.fingerprints, atol=2e-5, rtol=0.0)
    assert gpu.energy_kept == pytest.approx(cpu.energy_kept, abs=1e-5)
    loaded = build_dictionary(schedule, grid=t1_t2_grid(SMALL_STEP_PERCENT), device="cuda", cache_dir=tmp_path / "cpu")
    assert loaded.fingerprints.device.type == "cuda"
