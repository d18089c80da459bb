"""COVIDx dataset, transforms, step sampler and mixup of the slice classifier."""
import numpy as np
import pytest
import torch
from PIL import Image

from covidct.constants import SYNTHETIC_TAG
from covidct.covidx import SliceRecord
from covidct.errors import CovidctError, DatasetError
from covidct.bit import slice_data
from covidct.bit.slice_data import (COVIDxDataset, EvalTransform, StepBatchSampler, TrainTransform,
                                 find_synthetic_marker, fits_in_memory, mixup, mixup_lambda,
                                 normalize, subsample_per_class)


def _write_slices(folder, n=4, size=48):
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        img = np.zeros((size, size), np.uint8)
        img[10:30, 5:40] = 200 + i  # the "body": the box below
        Image.fromarray(img).save(folder / f"P{i}_1.png")
        records.append(SliceRecord(f"P{i}_1.png", i % 3, (5, 10, 39, 29)))
    return records


def test_dataset_crops_to_the_box_and_makes_three_channels(tmp_path):
    records = _write_slices(tmp_path / "images")
    ds = COVIDxDataset(records, tmp_path / "images", EvalTransform(16))
    pixels, y = ds[1]
    assert pixels.shape == (1, 16, 16) and pixels.dtype == torch.uint8 and y == 1
    assert torch.all(pixels == 201)  # everything inside the box, nothing outside
    x = normalize(pixels[None])
    assert x.shape == (1, 3, 16, 16)
    assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 1], x[0, 2])
    assert torch.allclose(x, torch.full_like(x, (201 / 255 - 0.5) / 0.5), atol=1e-6)


def test_train_transform_is_reproducible_per_seed_and_flips(tmp_path):
    pixels = np.tile(np.arange(40, dtype=np.uint8) * 6, (40, 1))  # a left-right ramp
    t = TrainTransform(40, 32)
    a = t(pixels, np.random.default_rng(5))
    b = t(pixels, np.random.default_rng(5))
    assert a.shape == (1, 32, 32) and torch.equal(a, b)
    directions = {bool(t(pixels, np.random.default_rng(s))[0, 0, -1] > t(pixels, np.random.default_rng(s))[0, 0, 0])
                  for s in range(20)}
    assert directions == {True, False}  # some crops flipped, some not


def test_jitter_scales_turns_and_shifts_within_its_bounds_reproducibly():
    # A bright disc on a dark square: its size in the crop tells the scale, its mean the shift.
    yy, xx = np.mgrid[:72, :72]
    pixels = np.where((yy - 36) ** 2 + (xx - 36) ** 2 < 20 ** 2, 200, 40).astype(np.uint8)
    plain, jittered = TrainTransform(72, 64), TrainTransform(72, 64, jitter=True)
    a = jittered(pixels, np.random.default_rng(3))
    assert a.shape == (1, 64, 64) and a.dtype == torch.uint8
    assert torch.equal(a, jittered(pixels, np.random.default_rng(3)))
    discs = [(jittered(pixels, np.random.default_rng(s))[0].numpy() > 120).sum() for s in range(40)]
    plain_disc = (plain(pixels, np.random.default_rng(0))[0].numpy() > 120).sum()
    # the disc's area follows the zoom: (64/57)^2 ~ 1.26 down to (64/72)^2 ~ 0.79 of plain
    assert 0.7 * plain_disc < min(discs) < 0.95 * plain_disc < 1.05 * plain_disc < max(discs) < 1.35 * plain_disc
    # background stays dark and the disc bright: the shift is small (<= 8 levels, 5% contrast)
    out = np.stack([jittered(pixels, np.random.default_rng(s))[0].numpy() for s in range(40)])
    corners = out[:, :4, :4].astype(int)
    assert 40 - 12 <= corners.min() and corners.max() <= 40 + 12 and len(np.unique(corners)) > 3


@pytest.mark.parametrize("transform", [TrainTransform(40, 32), EvalTransform(24)])
def test_kept_slices_give_the_same_items_and_are_decoded_once(tmp_path, monkeypatch, transform):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    records = []
    for i in range(3):  # textured slices, so a wrong crop or a stale picture would show
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(tmp_path / "images" / f"P{i}_1.png")
        records.append(SliceRecord(f"P{i}_1.png", i, (3, 5, 44, 40)))
    plain = COVIDxDataset(records, tmp_path / "images", transform)
    kept = COVIDxDataset(records, tmp_path / "images", transform, keep_prepared=True)
    reads = []
    real_read = slice_data.read_gray
    monkeypatch.setattr(slice_data, "read_gray", lambda path: reads.append(path) or real_read(path))
    items = [(i % 3, seed) for seed, i in enumerate(range(12))]  # 4 epochs, new augmentation each
    for item in items:
        a, b = plain[item], kept[item]
        assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert len(reads) == len(items) + 3  # the plain dataset reads every time, the kept one once each


def test_slices_are_kept_at_demo_size_not_for_all_of_covidx():
    assert fits_in_memory(1602, 72)            # the demo's 36 training patients: 8 MB
    assert not fits_in_memory(358_000, 512)    # COVIDx CT at the paper's resolution: 94 GB


def test_missing_images_fail_before_training_naming_the_first_few(tmp_path):
    records = _write_slices(tmp_path / "images", n=2)
    records += [SliceRecord(f"gone_{i}.png", 0, (0, 0, 5, 5)) for i in range(7)]
    with pytest.raises(DatasetError) as err:
        COVIDxDataset(records, tmp_path / "images")
    message = str(err.value)
    assert "7 of 9" in message and "gone_0.png" in message and "and 2 more" in message
    assert str(tmp_path / "images") in message


def test_unreadable_images_and_boxes_outside_fail_early(tmp_path):
    records = _write_slices(tmp_path / "images", n=2)
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    records.append(SliceRecord("broken.png", 0, (0, 0, 5, 5)))
    records.append(SliceRecord("P0_1.png", 0, (0, 0, 100, 20)))
    with pytest.raises(DatasetError, match=r"2 of 4 .*broken.png \(unreadable\).*outside 48x48"):
        COVIDxDataset(records, tmp_path / "images")


def test_step_sampler_is_a_function_of_seed_and_step():
    labels = np.repeat([0, 1, 2], 10)
    full = StepBatchSampler(labels, 8, total_steps=10, seed=3)
    batches = list(full)
    assert len(batches) == 10 and all(len(b) == 8 for b in batches)
    resumed = list(StepBatchSampler(labels, 8, total_steps=10, seed=3, start_step=6))
    assert resumed == batches[6:]
    # One epoch (30 items) covers every item once before any repeats.
    first_epoch = [i for b in batches for i, _ in b][:30]
    assert sorted(first_epoch) == list(range(30))
    other_seed = list(StepBatchSampler(labels, 8, total_steps=10, seed=4))
    assert other_seed != batches


def test_ranks_and_micro_batches_partition_the_global_batch():
    labels = np.repeat([0, 1, 2], 10)
    single = list(StepBatchSampler(labels, 8, total_steps=3, seed=1))
    shards = [list(StepBatchSampler(labels, 8, total_steps=3, seed=1, rank=r, world=2, batch_split=2))
              for r in range(2)]
    for step in range(3):
        parts = [item for r in range(2) for item in shards[r][2 * step] + shards[r][2 * step + 1]]
        assert sorted(parts) == sorted(single[step])
    with pytest.raises(CovidctError, match="split evenly"):
        StepBatchSampler(labels, 6, total_steps=3, seed=1, world=4)


def test_balanced_sampler_draws_classes_evenly():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    sampler = StepBatchSampler(labels, 30, total_steps=40, seed=0, balanced=True)
    drawn = np.array([labels[i] for batch in sampler for i, _ in batch])
    shares = np.bincount(drawn, minlength=3) / drawn.size
    assert np.all(np.abs(shares - 1 / 3) < 0.05)


def test_patient_balanced_sampler_draws_the_patients_of_a_class_evenly():
    # class 1: a lobar patient with 67 slices and a segmental one with 14 (a synthetic cohort's CP)
    labels = np.array([0] * 30 + [1] * 67 + [1] * 14)
    patients = ["N1"] * 30 + ["L"] * 67 + ["S"] * 14
    draw = lambda sampler: [patients[i] for step in range(300) for i, _ in sampler.step_items(step)]
    by_slice = draw(StepBatchSampler(labels, 32, 300, seed=0, balanced=True))
    by_patient = draw(StepBatchSampler(labels, 32, 300, seed=0, balanced=True, patients=patients))
    assert by_slice.count("L") > 4 * by_slice.count("S")              # as many as its slices
    assert abs(by_patient.count("L") / by_patient.count("S") - 1) < 0.1  # one patient, one share
    assert abs(by_patient.count("N1") / len(by_patient) - 0.5) < 0.03     # classes still even
    again = StepBatchSampler(labels, 32, 300, seed=0, balanced=True, patients=patients)
    assert again.step_items(7) == StepBatchSampler(labels, 32, 300, seed=0, balanced=True,
                                                   patients=patients).step_items(7)


def test_mixup_mixes_images_and_labels_with_the_same_lambda():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 4)
    y = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).float()
    lam = 0.3
    gen = torch.Generator().manual_seed(1)
    mixed_x, mixed_y = mixup(x, y, lam, gen)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(mixed_x, lam * x + (1 - lam) * x[perm])
    assert torch.allclose(mixed_y, lam * y + (1 - lam) * y[perm])
    # Recover lambda from each item: pixels and labels agree wherever the partner differs.
    for i in range(6):
        j = int(perm[i])
        if y[i].argmax() != y[j].argmax():
            lam_y = mixed_y[i, y[i].argmax()].item()
            lam_x = ((mixed_x[i] - x[j]) / (x[i] - x[j])).median().item()
            assert lam_y == pytest.approx(lam) and lam_x == pytest.approx(lam, abs=1e-4)
    assert torch.allclose(mixed_y.sum(1), torch.ones(6))


def test_mixup_lambda_follows_beta_and_is_off_at_zero():
    values = np.array([mixup_lambda(0.1, seed=0, step=s) for s in range(2000)])
    assert values.min() >= 0 and values.max() <= 1
    assert np.mean((values < 0.1) | (values > 0.9)) > 0.7  # Beta(0.1, 0.1) is U-shaped
    assert mixup_lambda(0.1, 0, 5) == mixup_lambda(0.1, 0, 5)
    assert mixup_lambda(0.0, 0, 5) == 1.0


def test_subsample_per_class_draws_at_most_n_per_class():
    records = [SliceRecord(f"p{i}_1.png", i % 3, (0, 0, 1, 1)) for i in range(60)]
    sub = subsample_per_class(records, 5, seed=0)
    assert [sum(r.label == c for r in sub) for c in range(3)] == [5, 5, 5]
    assert sub == subsample_per_class(records, 5, seed=0)
    assert sub != subsample_per_class(records, 5, seed=1)


def test_synthetic_marker_is_found_in_or_above_the_data_folder(tmp_path):
    (tmp_path / "covidx" / "images").mkdir(parents=True)
    assert not find_synthetic_marker(tmp_path / "covidx", tmp_path / "covidx" / "images")
    (tmp_path / "covidx" / "README.txt").write_text(f"{SYNTHETIC_TAG}: phantoms\n")
    assert find_synthetic_marker(tmp_path / "covidx" / "images")


def test_rewindow_spreads_lung_from_ground_glass_and_both_transforms_apply_it():
    from covidct.windowing import COVIDX_LUNG, LUNG_DETAIL

    table = slice_data.rewindow_table(LUNG_DETAIL.name)
    lung, glass, vessel = COVIDX_LUNG.to_uint8(np.array([-850.0, -600.0, 40.0]))
    # In the COVIDx picture aerated lung and ground glass are ~42 grey levels apart; re-windowed
    # at least twice that, and soft tissue saturates.
    assert int(glass) - int(lung) < 50
    assert int(table[glass]) - int(table[lung]) >= 2 * (int(glass) - int(lung))
    assert table[vessel] == 255 and table[0] == 0 and np.all(np.diff(table.astype(int)) >= 0)
    rng = np.random.default_rng(0)
    pixels = rng.integers(60, 200, (48, 48), dtype=np.uint8)
    for plain, windowed in ((EvalTransform(24), EvalTransform(24, LUNG_DETAIL.name)),
                            (TrainTransform(40, 32), TrainTransform(40, 32, LUNG_DETAIL.name))):
        assert np.array_equal(windowed.prepare(pixels), plain.prepare(table[pixels]))
        assert not np.array_equal(windowed.prepare(pixels), plain.prepare(pixels))


@pytest.mark.parametrize("name", ["lung-narow", "mediastinum", "covidctnet"])
def test_a_rewindow_other_than_the_lung_ones_is_refused_when_the_config_is_made(tmp_path, name):
    """A misspelt name, and windows that exist but reach beyond the COVIDx picture's range
    (its 8 bits cannot give them back), fail before any data is read."""
    from covidct.bit.settings import TrainConfig

    with pytest.raises(CovidctError, match=f"unknown re-window '{name}'; known: lung-detail, lung-detail-wide"):
        TrainConfig(train_split="t", images="i", out=str(tmp_path), rewindow=name)


def _chest(size=128, bubble=True):
    """An 8-bit COVIDx-window chest: air outside, a soft-tissue body, two aerated lungs and (below
    them) a small gas bubble; returns the picture, its body box and the lungs' true extent."""
    from covidct.windowing import COVIDX_LUNG

    yy, xx = np.mgrid[0:size, 0:size]
    hu = np.full((size, size), -1000.0)
    body = ((xx - 64) / 56) ** 2 + ((yy - 64) / 40) ** 2 < 1
    hu[body] = 40.0
    lungs = (((xx - 44) / 14) ** 2 + ((yy - 58) / 22) ** 2 < 1) | (((xx - 84) / 14) ** 2 + ((yy - 58) / 22) ** 2 < 1)
    hu[lungs] = -850.0
    if bubble:
        hu[(xx - 64) ** 2 + (yy - 94) ** 2 < 9] = -1000.0  # bowel gas: air, but not lung
    ys, xs = np.nonzero(body)
    box = (int(xs.min()) - 2, int(ys.min()) - 2, int(xs.max()) + 2, int(ys.max()) + 2)
    ly, lx = np.nonzero(lungs)
    return COVIDX_LUNG.to_uint8(hu), box, (int(lx.min()), int(ly.min()), int(lx.max()), int(ly.max()))


def test_lung_box_holds_the_lungs_with_a_margin_and_leaves_out_gas_and_the_body_wall():
    from covidct.windowing import lung_box

    pixels, body, lungs = _chest()
    x0, y0, x1, y1 = lung_box(pixels, body)
    assert x0 <= lungs[0] - 2 and y0 <= lungs[1] - 2 and x1 >= lungs[2] + 2 and y1 >= lungs[3] + 2
    assert body[0] <= x0 and body[1] <= y0 and x1 <= body[2] and y1 <= body[3]
    assert y1 < 91          # the gas bubble at rows 91-97 is not lung
    assert (x1 - x0) * (y1 - y0) < 0.6 * (body[2] - body[0]) * (body[3] - body[1])
    solid = pixels.copy()
    solid[solid < 100] = 236  # no air inside the body: the body box is read as it is
    solid[:body[1]] = 0
    assert lung_box(solid, body) == tuple(body)


def test_lung_box_frames_a_slice_alike_at_any_matrix():
    """A scan's 128-pixel slice and its 512-pixel COVIDx picture (what the classifier trained
    on) get the same box, to within a pixel of the 128 grid: with a fixed 4-pixel margin the
    128-pixel box was 3 pixels wider on each side, the lungs 10-20% smaller in the network's
    input, and whole-series calls fell from 0.83 to 0.52 on a development cohort."""
    from covidct.windowing import lung_box

    small, body, _ = _chest(bubble=False)
    large = np.kron(small, np.ones((4, 4), dtype=np.uint8))
    big_body = tuple(4 * v + (3 if k >= 2 else 0) for k, v in enumerate(body))
    at_128 = np.array(lung_box(small, body), dtype=float)
    at_512 = np.array(lung_box(large, big_body), dtype=float) / 4.0
    assert np.abs(at_128 - at_512).max() <= 1.0, (at_128, at_512)


def test_dataset_crops_by_its_crop_rule_and_refuses_an_unknown_one(tmp_path):
    from covidct.windowing import lung_box

    pixels, body, _ = _chest()
    (tmp_path / "images").mkdir()
    Image.fromarray(pixels).save(tmp_path / "images" / "P0_1.png")
    records = [SliceRecord("P0_1.png", 2, body)]
    whole = COVIDxDataset(records, tmp_path / "images", EvalTransform(32))
    lungs = COVIDxDataset(records, tmp_path / "images", EvalTransform(32), crop_rule="lungs")
    x0, y0, x1, y1 = lung_box(pixels, body)
    assert torch.equal(lungs[0][0], EvalTransform(32)(pixels[y0:y1 + 1, x0:x1 + 1]))
    assert not torch.equal(lungs[0][0], whole[0][0])
    with pytest.raises(CovidctError, match="unknown crop rule 'lung'"):
        COVIDxDataset(records, tmp_path / "images", crop_rule="lung")
