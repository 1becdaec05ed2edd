"""The diffusion machinery: schedule against its closed form, samplers against the exact denoiser of a known
distribution, determinism, patch-wise denoising against a direct computation, the network's shapes and the training
loss."""

import numpy as np
import pytest
import torch

from qmri_models.diffusion.denoiser import ConditionalDenoiser, DenoiserConfig
from qmri_models.diffusion.patches import PatchGrid, predict
from qmri_models.diffusion.sampling import denoising_loss, generate
from qmri_models.diffusion.schedule import NoiseSchedule, Sampler

TINY = DenoiserConfig(
    target_channels=2,
    condition_channels=3,
    channels=(8, 16),
    attention_levels=(False, True),
    res_blocks=1,
    norm_groups=4,
    head_channels=8,
)


class GaussianOracle(ConditionalDenoiser):
    """The exact noise predictor E[eps | x_t] when every pixel of x_0 is N(condition, sd^2), independently.

    With x_t = sqrt(a) x_0 + sqrt(1 - a) eps, E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a sd^2 + 1 - a).
    A sampler that is right turns it into samples of mean ``condition`` and SD ``sd``.
    """

    def __init__(self, schedule: NoiseSchedule, sd: float) -> None:
        super().__init__(
            DenoiserConfig(target_channels=1, condition_channels=1, channels=(32,), attention_levels=(False,))
        )
        self.abar = schedule.alphas_cumprod().double()
        self.sd = sd

    def forward(self, noisy: torch.Tensor, condition: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        a = self.abar[steps].view(-1, 1, 1, 1).to(noisy.dtype)
        return (1 - a).sqrt() * (noisy - a.sqrt() * condition) / (a * self.sd**2 + 1 - a)


def test_forward_process_is_the_closed_form() -> None:
    schedule = NoiseSchedule(train_steps=1000, beta_start=1e-4, beta_end=2e-2)
    abar = np.cumprod(1.0 - np.linspace(1e-4, 2e-2, 1000))
    np.testing.assert_allclose(schedule.alphas_cumprod().numpy(), abar, rtol=1e-5)
    x0 = torch.rand(4, 2, 8, 8) * 2 - 1
    eps = torch.randn(4, 2, 8, 8)
    steps = torch.tensor([0, 10, 500, 999])
    noisy = schedule.ddpm().add_noise(x0, eps, steps)
    a = torch.from_numpy(abar[steps.numpy()]).float().view(-1, 1, 1, 1)
    torch.testing.assert_close(noisy, a.sqrt() * x0 + (1 - a).sqrt() * eps, rtol=1e-5, atol=1e-5)
    assert abar[-1] < 1e-4  # the last step is (nearly) pure noise


def test_ddpm_sampler_draws_the_distribution_of_the_exact_denoiser() -> None:
    """Mean and SD of the ancestral sampler's samples are the known distribution's."""
    schedule = NoiseSchedule()
    mean = torch.linspace(-0.5, 0.5, 64).view(1, 8, 8)
    samples = generate(GaussianOracle(schedule, sd=0.1), mean, schedule, n_samples=128, sampler="ddpm", seed=3)
    assert samples.shape == (128, 1, 8, 8)
    torch.testing.assert_close(samples.mean(0), mean, atol=0.03, rtol=0)  # SE 0.1 / sqrt(128) = 0.009
    assert abs(float(samples.std(0).mean()) - 0.1) < 0.006  # SE of the mean SD over 64 pixels: about 0.001


@pytest.mark.parametrize("steps", [10, 50, 1000])
def test_ddim_sampler_follows_its_closed_form(steps: int) -> None:
    """DDIM with the exact denoiser of N(mu, sd^2) data maps each deviation from the mean linearly: a step from
    abar a to a' multiplies it by (sqrt(a a') sd^2 + sqrt((1 - a)(1 - a'))) / (a sd^2 + 1 - a), so few steps shrink
    the spread (known DDIM behaviour) and all steps keep it. The samples' SD is that product over its steps."""
    schedule = NoiseSchedule()
    sd = 0.1
    abar = np.cumprod(1.0 - np.linspace(schedule.beta_start, schedule.beta_end, schedule.train_steps))
    timesteps = [int(t) for t in schedule.ddim(steps).timesteps]
    following = [*(abar[t] for t in timesteps[1:]), 1.0]
    expected = np.prod(
        [
            (np.sqrt(abar[t] * a2) * sd**2 + np.sqrt((1 - abar[t]) * (1 - a2))) / (abar[t] * sd**2 + 1 - abar[t])
            for t, a2 in zip(timesteps, following, strict=True)
        ]
    )
    mean = torch.linspace(-0.5, 0.5, 64).view(1, 8, 8)
    samples = generate(
        GaussianOracle(schedule, sd=sd), mean, schedule, n_samples=128, sampler="ddim", steps=steps, seed=3
    )
    torch.testing.assert_close(samples.mean(0), mean, atol=0.03, rtol=0)
    assert float(samples.std(0).mean()) == pytest.approx(expected, rel=0.05)
    if steps == 1000:
        assert expected == pytest.approx(sd, rel=0.03)


def test_samples_repeat_for_a_seed_and_differ_between_seeds() -> None:
    torch.manual_seed(0)
    network = ConditionalDenoiser(TINY)
    schedule = NoiseSchedule(train_steps=20)
    condition = torch.randn(3, 8, 8)
    first = generate(network, condition, schedule, n_samples=3, sampler="ddpm", seed=5)
    again = generate(network, condition, schedule, n_samples=3, sampler="ddpm", seed=5)
    other = generate(network, condition, schedule, n_samples=3, sampler="ddpm", seed=6)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first[0], first[1])  # each sample from its own noise
    ddim = generate(network, condition, schedule, n_samples=3, sampler="ddim", steps=5, seed=5)
    torch.testing.assert_close(
        ddim, generate(network, condition, schedule, n_samples=3, sampler="ddim", steps=5, seed=5)
    )


def test_steps_are_reported_and_batches_keep_the_sample_count() -> None:
    network = ConditionalDenoiser(TINY)
    seen: list[tuple[int, int]] = []
    samples = generate(
        network,
        torch.zeros(3, 8, 8),
        NoiseSchedule(train_steps=20),
        n_samples=5,
        steps=4,
        batch_size=2,
        on_step=lambda done, total: seen.append((done, total)),
    )
    assert samples.shape == (5, 2, 8, 8)
    assert seen[-1] == (12, 12)  # 3 batches of 4 steps


def test_denoiser_shapes_and_errors() -> None:
    network = ConditionalDenoiser(TINY)
    out = network(torch.randn(2, 2, 16, 8), torch.randn(2, 3, 16, 8), torch.tensor([0, 7]))
    assert out.shape == (2, 2, 16, 8)
    with pytest.raises(ValueError, match=r"condition must be \(2, 3, 16, 8\)"):
        network(torch.randn(2, 2, 16, 8), torch.randn(2, 2, 16, 8), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="multiples of 2"):
        network(torch.randn(1, 2, 9, 8), torch.randn(1, 3, 9, 8), torch.tensor([0]))
    rebuilt = ConditionalDenoiser.from_state(network.state())
    x, c, t = torch.randn(1, 2, 8, 8), torch.randn(1, 3, 8, 8), torch.tensor([3])
    torch.testing.assert_close(rebuilt(x, c, t), network.eval()(x, c, t))


def test_sampler_steps_are_all_training_steps_for_ddpm() -> None:
    schedule = NoiseSchedule(train_steps=20)
    assert schedule.sampler_steps("ddpm", 4) == 20
    assert schedule.sampler_steps("ddim", 4) == 4
    assert len(schedule.ddim(4).timesteps) == 4


def test_bad_settings_name_themselves() -> None:
    with pytest.raises(ValueError, match=r"steps must divide train_steps \(20\), got 21"):
        NoiseSchedule(train_steps=20).ddim(21)
    with pytest.raises(ValueError, match=r"steps must divide train_steps \(20\), got 3"):
        NoiseSchedule(train_steps=20).ddim(3)
    with pytest.raises(ValueError, match="sampler must be one of ddpm, ddim"):
        generate(ConditionalDenoiser(TINY), torch.zeros(3, 8, 8), NoiseSchedule(), n_samples=1, sampler="euler")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiple of norm_groups"):
        DenoiserConfig(target_channels=1, condition_channels=1, channels=(30,), attention_levels=(False,))


def test_training_lowers_the_denoising_loss() -> None:
    """A few steps of Adam on one fixed example make the predicted noise closer than the untrained network's."""
    torch.manual_seed(0)
    network = ConditionalDenoiser(TINY)
    schedule = NoiseSchedule(train_steps=50)
    target = torch.rand(4, 2, 8, 8) * 2 - 1
    condition = target.repeat(1, 2, 1, 1)[:, :3]
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)

    def loss_now() -> float:
        with torch.no_grad():
            return float(denoising_loss(network, schedule, target, condition, torch.Generator().manual_seed(1)))

    before = loss_now()
    generator = torch.Generator().manual_seed(2)
    for _ in range(60):
        loss = denoising_loss(network, schedule, target, condition, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss_now() < 0.7 * before


@pytest.mark.parametrize(
    ("length", "size", "stride", "starts"),
    [(20, 8, 3, [0, 3, 6, 9, 12]), (20, 8, 8, [0, 8, 12]), (8, 8, 4, [0]), (5, 8, 2, [0]), (17, 8, 9, None)],
)
def test_patch_starts_cover_the_side_and_end_at_the_edge(
    length: int, size: int, stride: int, starts: list[int] | None
) -> None:
    if starts is None:
        with pytest.raises(ValueError, match="stride <= size"):
            PatchGrid(size, stride)
        return
    got = PatchGrid(size, stride).starts(length)
    assert got == starts
    covered = np.zeros(length, bool)
    for start in got:
        covered[start : start + size] = True
    assert covered.all()


def test_patchwise_prediction_is_the_mean_of_the_overlapping_patches() -> None:
    def patch_mean(noisy: torch.Tensor, condition: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """A denoiser that sees its whole input: every pixel gets the input's mean (per example and channel)."""
        return (noisy + condition.mean(dim=1, keepdim=True)).mean(dim=(-2, -1), keepdim=True).expand_as(noisy)

    rng = np.random.default_rng(3)
    noisy = torch.from_numpy(rng.standard_normal((2, 1, 13, 11)))
    condition = torch.from_numpy(rng.standard_normal((2, 2, 13, 11)))
    got = predict(patch_mean, noisy, condition, 5, PatchGrid(6, 4)).numpy()
    direct = np.zeros((2, 1, 13, 11))
    count = np.zeros((13, 11))
    for top in (0, 4, 7):  # by hand: 13 px with 6 px patches every 4 px, the last at the edge
        for left in (0, 4, 5):
            window = (..., slice(top, top + 6), slice(left, left + 6))
            value = (noisy[window] + condition[window].mean(dim=1, keepdim=True)).mean(dim=(-2, -1), keepdim=True)
            direct[window] += value.numpy()
            count[window[1:]] += 1
    np.testing.assert_allclose(got, direct / count, rtol=1e-12)
    whole = predict(patch_mean, noisy, condition, 5, PatchGrid(16, 4)).numpy()
    np.testing.assert_allclose(whole, patch_mean(noisy, condition, torch.zeros(2)).numpy(), rtol=1e-12)


def test_patchwise_generation_equals_whole_for_a_pixelwise_denoiser() -> None:
    schedule = NoiseSchedule(train_steps=100)
    oracle = GaussianOracle(schedule, sd=0.2)
    condition = torch.linspace(-0.5, 0.5, 20 * 17).view(1, 20, 17)
    for sampler in ("ddim", "ddpm"):
        whole = generate(oracle, condition, schedule, n_samples=2, sampler=sampler, steps=10, seed=4)
        patched = generate(
            oracle, condition, schedule, n_samples=2, sampler=sampler, steps=10, seed=4, patches=PatchGrid(8, 3)
        )
        torch.testing.assert_close(patched, whole, rtol=1e-5, atol=1e-6)


class ConvertedOracle(GaussianOracle):
    """The Gaussian oracle's answer as noise, velocity or clean sample (one denoiser, three parametrisations)."""

    def __init__(self, schedule: NoiseSchedule, sd: float) -> None:
        super().__init__(schedule, sd)
        self.prediction = schedule.prediction

    def forward(self, noisy: torch.Tensor, condition: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        eps = super().forward(noisy, condition, steps)
        a = self.abar[steps].view(-1, 1, 1, 1).to(noisy.dtype)
        x0 = (noisy - (1 - a).sqrt() * eps) / a.sqrt()
        return {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0, "sample": x0}[self.prediction]


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_samplers_give_the_same_samples_whatever_the_network_predicts(prediction: str) -> None:
    condition = torch.linspace(-0.5, 0.5, 64).view(1, 8, 8)
    for sampler, steps in (("ddim", 10), ("ddpm", 50)):
        schedules = [NoiseSchedule(train_steps=50), NoiseSchedule(train_steps=50, prediction=prediction)]  # type: ignore[arg-type]
        eps_samples, other_samples = (
            generate(ConvertedOracle(s, 0.2), condition, s, n_samples=4, sampler=sampler, steps=steps, seed=6)  # type: ignore[arg-type]
            for s in schedules
        )
        torch.testing.assert_close(other_samples, eps_samples, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize(("sampler", "steps"), [("ddim", 10), ("ddim", 50), ("ddim", 1000), ("ddpm", 1000)])
def test_samplers_keep_an_overshooting_denoiser_at_the_edge(prediction: str, sampler: Sampler, steps: int) -> None:
    """A denoiser that puts its data at -1.2, outside the targets' range (as a network overshoots a background at
    -1), gives samples at the edge, -1, with every sampler and step count. Clipping x_0 without its noise estimate
    (MONAI's DDIM) ends 1000 steps at +0.77."""
    schedule = NoiseSchedule(prediction=prediction)  # type: ignore[arg-type]
    condition = torch.full((1, 8, 8), -1.2)
    samples = generate(
        ConvertedOracle(schedule, 0.05),
        condition,
        schedule,
        n_samples=16,
        sampler=sampler,
        steps=steps,
        seed=3,
    )
    assert abs(float(samples.mean()) + 1.0) < 0.005
    assert float(samples.min()) >= -1.0 - 1e-5


def test_clipping_leaves_a_prediction_inside_the_range_alone_and_keeps_it_consistent() -> None:
    abar = torch.tensor(0.3)
    sample = torch.randn(2, 1, 4, 4)
    clean = torch.linspace(-1.5, 1.5, 32).view(2, 1, 4, 4)
    eps = (sample - abar.sqrt() * clean) / (1 - abar).sqrt()
    outputs = {"epsilon": eps, "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * clean, "sample": clean}
    inside = clean.abs() <= 1
    for prediction, output in outputs.items():
        clipped = NoiseSchedule(prediction=prediction).clip_prediction(output, sample, abar)  # type: ignore[arg-type]
        torch.testing.assert_close(clipped[inside], output[inside])
        implied = {
            "epsilon": (sample - (1 - abar).sqrt() * clipped) / abar.sqrt(),
            "v_prediction": abar.sqrt() * sample - (1 - abar).sqrt() * clipped,
            "sample": clipped,
        }[prediction]
        torch.testing.assert_close(implied, clean.clamp(-1, 1))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_training_target_is_what_the_network_predicts(prediction: str) -> None:
    schedule = NoiseSchedule(train_steps=50, prediction=prediction)  # type: ignore[arg-type]
    target = torch.rand(3, 2, 8, 8) * 2 - 1
    condition = torch.zeros(3, 3, 8, 8)
    oracle = ConvertedOracle(schedule, 0.2)

    def knows_the_answer(noisy: torch.Tensor, condition: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Return the exact target, from the noise drawn by the same generator state."""
        replay = torch.Generator().manual_seed(8)
        drawn = torch.randint(0, 50, (3,), generator=replay)
        eps = torch.randn(target.shape, generator=replay)
        assert torch.equal(drawn, steps)
        a = oracle.abar[steps].view(-1, 1, 1, 1).float()
        return {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * target, "sample": target}[prediction]

    loss = denoising_loss(knows_the_answer, schedule, target, condition, torch.Generator().manual_seed(8))  # type: ignore[arg-type]
    assert float(loss) < 1e-10
    with pytest.raises(ValueError, match="prediction must be one of epsilon, v_prediction, sample"):
        NoiseSchedule(prediction="x0")  # type: ignore[arg-type]
