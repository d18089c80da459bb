"""Perlin pseudo-infection: seeded, zero-mean, bounded, scale sets the feature size, vectorised."""
from __future__ import annotations

import numpy as np
import pytest

from covidct.covidctnet import perlin
from covidct.covidctnet.perlin import PseudoInfection, amplitude_bound, perlin_noise


def correlation_length(image: np.ndarray) -> float:
    """Mean lag (pixels, along both axes) where the autocorrelation first drops below 1/2."""
    centred = image - image.mean()
    spectrum = np.abs(np.fft.fft2(centred)) ** 2
    auto = np.real(np.fft.ifft2(spectrum))
    auto /= auto[0, 0]
    return float(np.mean([np.argmax(auto[0, :] < 0.5), np.argmax(auto[:, 0] < 0.5)]))


def test_same_seed_same_noise_other_seed_other_noise():
    a = perlin_noise((64, 64), 12, octaves=10, persistence=0.3, seed=7)
    b = perlin_noise((64, 64), 12, octaves=10, persistence=0.3, seed=7)
    c = perlin_noise((64, 64), 12, octaves=10, persistence=0.3, seed=8)
    assert a.dtype == np.float32 and a.shape == (64, 64)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.05


def test_pseudo_infection_is_reproducible_from_the_generator_seed():
    slices = np.full((6, 32, 32), 0.5, dtype=np.float32)
    x1, n1 = PseudoInfection().apply(slices, np.random.default_rng(3))
    x2, n2 = PseudoInfection().apply(slices, np.random.default_rng(3))
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(n1, n2)


@pytest.mark.parametrize("persistence", [-0.5, 0.0, 0.3, 0.49])
def test_values_are_bounded_and_about_zero_mean(persistence):
    images = np.stack([perlin_noise((64, 64), 15, 10, persistence, 2.0, seed) for seed in range(30)])
    bound = amplitude_bound(10, persistence)
    assert np.abs(images).max() <= bound + 1e-5
    assert abs(images.mean()) < 0.05 * images.std() + 0.01
    assert images.std() > 0.05  # not flat


def test_single_octave_stays_within_one():
    images = np.stack([perlin_noise((64, 64), 9, 1, seed=s) for s in range(20)])
    assert np.abs(images).max() <= 1.0 + 1e-6
    # Gradient noise is zero on the lattice points (multiples of the scale).
    lattice = perlin_noise((64, 64), 8, 1, seed=1)[::8, ::8]
    np.testing.assert_allclose(lattice, 0.0, atol=1e-6)


def test_scale_sets_the_spatial_frequency():
    short = np.mean([correlation_length(perlin_noise((128, 128), 10, 1, seed=s)) for s in range(10)])
    long = np.mean([correlation_length(perlin_noise((128, 128), 30, 1, seed=s)) for s in range(10)])
    assert 2.0 < long / short < 4.5  # three times the scale, about three times the length
    # More octaves add finer detail: a shorter correlation length at the same scale.
    detailed = np.mean([correlation_length(perlin_noise((128, 128), 30, 10, 0.5, seed=s))
                        for s in range(10)])
    assert detailed < long


def test_whole_image_per_octave_not_per_pixel(monkeypatch):
    calls = []
    original = perlin._octave

    def counting(x, y, perm):
        calls.append((len(x), len(y)))
        return original(x, y, perm)

    monkeypatch.setattr(perlin, "_octave", counting)
    perlin_noise((200, 150), 20, octaves=6, persistence=0.5)
    assert calls == [(200, 150)] * 6


def test_method_draws_scales_and_persistence_in_range(monkeypatch):
    drawn = []
    original = perlin.perlin_noise

    def spy(shape, scale, octaves, persistence, lacunarity, seed):
        drawn.append((scale, persistence, octaves, lacunarity))
        return original(shape, scale, octaves, persistence, lacunarity, seed)

    monkeypatch.setattr(perlin, "perlin_noise", spy)
    rng = np.random.default_rng(0)
    for _ in range(200):
        PseudoInfection().draw((4, 128), rng)  # scales refer to the 128-pixel width
    scales = np.array([d[0] for d in drawn])
    persistences = np.array([d[1] for d in drawn])
    assert scales.min() >= 10 and scales.max() < 30 and len(set(scales)) > 10
    assert persistences.min() >= -0.5 and persistences.max() < 0.5
    assert (persistences < 0).any() and (persistences > 0).any()
    assert {d[2] for d in drawn} == {10} and {d[3] for d in drawn} == {2.0}
    # On a 64-pixel slice the scale shrinks with it: same pattern relative to the anatomy.
    drawn.clear()
    PseudoInfection().draw((64, 64), np.random.default_rng(1))
    assert 5 <= drawn[0][0] < 15


def test_half_the_slices_get_noise_and_the_rest_stay_clean():
    rng = np.random.default_rng(0)
    slices = rng.random((10, 32, 32)).astype(np.float32)
    inputs, noisy = PseudoInfection().apply(slices, np.random.default_rng(1), fraction=0.5)
    assert noisy.sum() == 5
    np.testing.assert_array_equal(inputs[~noisy], slices[~noisy])
    changed = np.abs(inputs[noisy] - slices[noisy]).reshape(5, -1).mean(axis=1)
    assert np.all(changed > 0.01)


def _chest_slice(size: int = 48) -> np.ndarray:
    """A pre-processed-looking slice: soft-tissue body (0.74) holding two aerated lungs (0.1)
    with a vessel (0.75) in one of them, air (0) outside."""
    yy, xx = np.mgrid[:size, :size] / size
    body = ((yy - 0.5) / 0.45) ** 2 + ((xx - 0.5) / 0.48) ** 2 < 1
    lungs = (((yy - 0.5) / 0.3) ** 2 + ((np.abs(xx - 0.5) - 0.22) / 0.16) ** 2) < 1
    vessel = ((yy - 0.45) ** 2 + (xx - 0.3) ** 2) < 0.03 ** 2
    return np.where(body, np.where(lungs & ~vessel, 0.1, 0.74), 0.0).astype(np.float32)


def test_opacity_pseudo_infection_is_denser_blobs_inside_the_lungs_only():
    """Opacities make lung denser (never darker), up to consolidation, only on aerated lung
    (vessels and the body stay), and cover a bounded share of it."""
    from covidct.windowing import COVIDCTNET

    clean = _chest_slice()
    air = perlin.air_in_body(clean) > 0
    slices = np.repeat(clean[None], 40, axis=0)
    inputs, noisy = PseudoInfection().apply(slices, np.random.default_rng(0), fraction=1.0,
                                            region=perlin.NOISE_LUNGS, kind=perlin.NOISE_OPACITY)
    assert noisy.all()
    change = inputs - slices
    assert change.min() >= -1e-6                      # infection is denser than lung, not darker
    np.testing.assert_array_equal(change[:, ~air], 0)  # body, vessel and outside untouched
    dense = COVIDCTNET.to_unit(np.array([-100.0]))[0]
    peaks = inputs[:, air].max(axis=1)
    assert (peaks > dense).sum() >= 5                  # some reach consolidation density
    assert (peaks < dense).sum() >= 5                  # and some stay ground glass
    cover = (change[:, air] > 0.05).mean(axis=1)
    assert 0.01 < cover.mean() < 0.4 and cover.max() < 0.6


def test_unknown_noise_kind_is_refused():
    with pytest.raises(ValueError, match="noise kind"):
        PseudoInfection().apply(np.zeros((2, 8, 8), np.float32), np.random.default_rng(0), kind="x")


def _wall_contact(region: np.ndarray, lung: np.ndarray) -> float:
    """Share of the lung's border with the body that ``region`` covers."""
    from scipy import ndimage

    border = lung & ~ndimage.binary_erosion(lung)
    return float(region[border].mean())


def test_lobar_pseudo_infection_fills_part_of_one_lung_against_the_wall():
    """A lobar consolidation: consolidation density, within one lung, a bounded share of it,
    and it reaches the chest wall over a stretch (what opacity blobs rarely do)."""
    from scipy import ndimage

    from covidct.windowing import COVIDCTNET

    clean = _chest_slice()
    air = perlin.air_in_body(clean)
    labels, count = ndimage.label(air > 0)
    assert count == 2
    dense = COVIDCTNET.to_unit(np.array([-100.0]))[0]
    rng = np.random.default_rng(0)
    contacts = []
    for _ in range(20):
        out = PseudoInfection().lobar(clean, air, rng)
        region = (out - clean > 0.3) & (air > 0)
        assert region.any()
        hit = {int(v) for v in np.unique(labels[region])}
        assert len(hit) == 1                                   # one lung
        lung = labels == hit.pop()
        assert 0.1 < region[lung].mean() < 0.75                # part of it, not all
        assert np.percentile(out[region], 50) > dense          # consolidation density
        assert np.all(out[labels == 0][clean[labels == 0] < 0.05] == 0)  # outside the body stays air
        contacts.append(_wall_contact(region, lung))
    assert np.median(contacts) > 0.1


def test_lobar_kind_mixes_lobar_consolidations_and_opacities():
    clean = _chest_slice()
    slices = np.repeat(clean[None], 40, axis=0)
    inputs, noisy = PseudoInfection().apply(slices, np.random.default_rng(1), fraction=1.0,
                                            region=perlin.NOISE_LUNGS, kind=perlin.NOISE_LOBAR)
    air = perlin.air_in_body(clean) > 0
    dense = (inputs - slices > 0.3) & air
    share = dense.reshape(40, -1).sum(1) / air.sum()
    # a lobar consolidation turns at least a tenth of the aerated lung dense; opacities of
    # ground-glass density none of it: both kinds appear
    assert (share > 0.1).sum() >= 8 and (share == 0).sum() >= 3


def test_pseudo_map_auc_rewards_removing_the_pseudo_infection_not_copying():
    """The denoiser's validation map AUC (train-covidctnet --denoiser-select map-auc): a
    denoiser that returns the clean slice singles out the changed pixels (not all: a lobar
    consolidation also lightens the vessels it swallows, whose map is negative); one that
    copies its input is at chance; one that removes half of each change ranks as a full
    removal (a ranking, not a loss), and one that doubles each change is its mirror image."""
    from covidct.covidctnet.train import pseudo_map_auc

    clean = np.repeat(_chest_slice()[None], 12, axis=0)
    inputs, _ = PseudoInfection().apply(clean, np.random.default_rng(4), fraction=0.5,
                                        region=perlin.NOISE_LUNGS, kind=perlin.NOISE_LOBAR)
    removed = pseudo_map_auc(inputs, clean, clean)
    assert removed > 0.9
    assert pseudo_map_auc(inputs, clean, inputs) == pytest.approx(0.5)
    assert pseudo_map_auc(inputs, clean, (inputs + clean) / 2) == pytest.approx(removed, abs=0.01)
    assert pseudo_map_auc(inputs, clean, 2 * inputs - clean) == pytest.approx(1 - removed)
    assert pseudo_map_auc(clean, clean, clean) is None  # nothing changed: no AUC
