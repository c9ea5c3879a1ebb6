"""gtsrb.augment.BatchAugment: the distribution of kornia's RandomAffine + ColorJitter (checked against
kornia itself, which the training used before), in a few batched ops with no host sync."""

import math

import numpy as np

import kornia.augmentation as K
import pytest
import torch
from kornia.enhance import adjust_brightness_accumulative, adjust_contrast_with_mean_subtraction
from kornia.geometry.transform import get_affine_matrix2d, warp_affine
from torch.profiler import ProfilerActivity, profile

from gtsrb.augment import AugmentParams, BatchAugment

SYNC_OPS = {"aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::is_nonzero"}


def kornia_modules():
    """The pipeline BatchAugment replaces, as gtsrb.train built it."""
    return (
        K.RandomAffine(degrees=10.0, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=5.0, p=1.0),
        K.ColorJitter(brightness=0.3, contrast=0.3, p=0.8),
    )


def kornia_affine_args(p: AugmentParams, h: int, w: int) -> dict[str, torch.Tensor]:
    """``p`` as RandomAffine's parameters (pixels, degrees)."""
    n = len(p.angle)
    size = torch.tensor([w, h], dtype=p.angle.dtype)
    return dict(
        translations=p.translate * size,
        center=(size / 2 - 0.5).expand(n, 2).clone(),
        scale=p.scale[:, None].repeat(1, 2),
        angle=torch.rad2deg(p.angle),
        shear_x=torch.rad2deg(p.shear),
        shear_y=torch.zeros(n),
    )


def reference_modules(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """kornia's RandomAffine and ColorJitter modules, replaying ``p``."""
    affine, jitter = kornia_modules()
    n = len(x)
    jitter_params = dict(
        brightness_factor=p.brightness,
        contrast_factor=p.contrast,
        saturation_factor=torch.ones(n),
        hue_factor=torch.zeros(n),
        order=torch.tensor([0, 1, 2, 3] if p.brightness_first else [1, 0, 2, 3]),
        batch_prob=p.color.float(),
    )
    return jitter(affine(x, params=kornia_affine_args(p, *x.shape[2:])), params=jitter_params)


def reference_functional(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """The same through kornia's functions, as those modules call them."""
    n, _, h, w = x.shape
    a = kornia_affine_args(p, h, w)
    # RandomAffine draws the shear in degrees and passes radians.
    matrix = get_affine_matrix2d(
        a["translations"], a["center"], a["scale"], a["angle"], p.shear, torch.zeros(n)
    )
    y = warp_affine(x, matrix[:, :2], (h, w), "bilinear", "zeros", align_corners=False)
    steps = [lambda t: adjust_brightness_accumulative(t, p.brightness),
             lambda t: adjust_contrast_with_mean_subtraction(t, p.contrast)]
    jittered = y.clamp(0, 1)
    for step in steps if p.brightness_first else steps[::-1]:
        jittered = step(jittered)
    return torch.where(p.color.view(n, 1, 1, 1), jittered.clamp(0, 1), y)


def identity_params(n: int, color: bool) -> AugmentParams:
    zeros, ones = torch.zeros(n), torch.ones(n)
    return AugmentParams(
        angle=zeros, shear=zeros, scale=ones, translate=torch.zeros(n, 2), brightness=ones, contrast=ones,
        color=torch.full((n,), color), brightness_first=torch.tensor(True),
    )


@pytest.mark.parametrize("reference", [reference_modules, reference_functional])
@pytest.mark.parametrize("brightness_first", [True, False])
@pytest.mark.parametrize(
    "channels,height,memory_format",
    [(3, 28, torch.contiguous_format), (3, 28, torch.channels_last), (1, 20, torch.contiguous_format)],
)
def test_matches_kornia_given_the_same_parameters(reference, brightness_first, channels, height, memory_format):
    torch.manual_seed(0)
    x = torch.rand(6, channels, height, 28).contiguous(memory_format=memory_format)
    aug = BatchAugment()
    p = aug.sample_params(6, "cpu")._replace(
        color=torch.tensor([True, False, True, True, False, True]),
        brightness_first=torch.tensor(brightness_first),
    )
    out = aug.apply(x, p)
    assert out.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(out, reference(x, p), rtol=0, atol=2e-5)


def test_parameter_distributions_match_kornias():
    n = 20000
    torch.manual_seed(0)
    p = BatchAugment().sample_params(n, "cpu")
    affine, jitter = kornia_modules()
    ka = affine.forward_parameters((n, 3, 28, 28))
    kj = jitter.forward_parameters((n, 3, 28, 28))
    # A scalar shear is an x-axis shear only; scale is isotropic; the rest of ColorJitter is neutral.
    assert (ka["shear_y"] == 0).all() and (ka["scale"][:, 0] == ka["scale"][:, 1]).all()
    assert (kj["saturation_factor"] == 1).all() and (kj["hue_factor"] == 0).all()
    pairs = {
        "angle (deg)": (torch.rad2deg(p.angle), ka["angle"], (-10, 10)),
        "shear (deg)": (torch.rad2deg(p.shear), ka["shear_x"], (-5, 5)),
        "scale": (p.scale, ka["scale"][:, 0], (0.9, 1.1)),
        "translate x (of W)": (p.translate[:, 0], ka["translations"][:, 0] / 28, (-0.1, 0.1)),
        "translate y (of H)": (p.translate[:, 1], ka["translations"][:, 1] / 28, (-0.1, 0.1)),
        "brightness": (p.brightness, kj["brightness_factor"], (0.7, 1.3)),
        "contrast": (p.contrast, kj["contrast_factor"], (0.7, 1.3)),
    }
    for name, (ours, theirs, (lo, hi)) in pairs.items():
        width = hi - lo
        for v in (ours, theirs):  # uniform on [lo, hi]: both ends reached, flat (std = width / sqrt 12)
            assert lo - 1e-6 <= v.min() < lo + 1e-3 * width and hi - 1e-3 * width < v.max() <= hi + 1e-6, name
            assert abs(v.mean() - (lo + hi) / 2) < 0.01 * width, name
            assert abs(v.std() - width / math.sqrt(12)) < 0.01 * width, name
    # Colour jitter on ~80% of the samples, each on its own.
    assert abs(p.color.float().mean() - 0.8) < 0.01
    assert abs(kj["batch_prob"].float().mean() - 0.8) < 0.01
    assert p.color.shape == (n,) and p.color.dtype == torch.bool


@pytest.mark.parametrize("strength", [0.0, 1.5])
def test_strength_scales_every_range_and_keeps_the_defaults_at_one(strength):
    default, wide = BatchAugment(), BatchAugment.with_strength(strength)
    assert (default._low, default._high) == (BatchAugment.with_strength(1.0)._low, BatchAugment.with_strength(1.0)._high)
    centre = (0, 0, 1, 0, 0, 1, 1)  # angle, shear, scale, shift x, y, brightness, contrast
    for lo, hi, dlo, dhi, c in zip(wide._low, wide._high, default._low, default._high, centre, strict=True):
        assert lo == pytest.approx(c + strength * (dlo - c)) and hi == pytest.approx(c + strength * (dhi - c))
    torch.manual_seed(0)
    p = wide.sample_params(20000, "cpu")
    assert torch.rad2deg(p.angle.abs()).max() == pytest.approx(10 * strength, abs=0.05)
    assert p.brightness.max() == pytest.approx(1 + 0.3 * strength, abs=1e-3)


@pytest.mark.parametrize("strength", [-0.5, 3.4])
def test_a_strength_out_of_range_is_refused(strength):
    with pytest.raises(ValueError, match="augment_strength"):
        BatchAugment.with_strength(strength)


def test_brightness_first_is_a_fair_coin_per_call():
    torch.manual_seed(0)
    aug = BatchAugment()
    first = torch.stack([aug.sample_params(4, "cpu").brightness_first for _ in range(1000)])
    assert first.shape == (1000,) and abs(first.float().mean() - 0.5) < 0.05
    # kornia: one permutation of the four steps per call; brightness (0) before contrast (1) half the time.
    _, jitter = kornia_modules()
    orders = [jitter.forward_parameters((4, 3, 2, 2))["order"].tolist() for _ in range(1000)]
    assert abs(sum(o.index(0) < o.index(1) for o in orders) / 1000 - 0.5) < 0.05


@pytest.mark.parametrize("color", [False, True])
@pytest.mark.parametrize("height", [28, 20])
def test_identity_parameters_leave_the_batch_unchanged(color, height):
    torch.manual_seed(0)
    x = torch.rand(6, 3, height, 28)
    torch.testing.assert_close(BatchAugment().apply(x, identity_params(6, color)), x, rtol=0, atol=1e-5)


def test_a_positive_shift_moves_content_right_and_down():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 20, 28)
    p = identity_params(2, False)._replace(translate=torch.tensor([[1 / 28, 0.0], [0.0, 2 / 20]]))
    out = BatchAugment().apply(x, p)
    torch.testing.assert_close(out[0, :, :, 1:], x[0, :, :, :-1], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1, :, 2:], x[1, :, :-2], rtol=0, atol=1e-5)
    assert out[0, :, :, 0].max() < 1e-5 and out[1, :, :2].max() < 1e-5  # zero padding


def test_a_positive_angle_turns_the_image_clockwise():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 28, 28)
    p = identity_params(1, False)._replace(angle=torch.tensor([math.pi / 2]))
    out = BatchAugment().apply(x, p)
    torch.testing.assert_close(out, torch.rot90(x, k=-1, dims=(2, 3)), rtol=0, atol=1e-5)


def test_never_mirrors():
    # A flip would turn "keep left" into "keep right": a left-heavy image stays left-heavy.
    torch.manual_seed(0)
    x = torch.zeros(512, 3, 28, 28)
    x[..., 4:12] = 1.0
    out = BatchAugment()(x)
    assert (out[..., :14].mean((1, 2, 3)) > 2 * out[..., 14:].mean((1, 2, 3))).all()


def aten_ops(aug: BatchAugment, x: torch.Tensor) -> list[str]:
    with torch.no_grad():
        aug(x)  # builds the cached constants
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            aug(x)
    return [e.name for e in prof.events() if e.name.startswith("aten::")]


def test_forward_has_no_host_sync_and_few_ops():
    # kornia's pipeline runs ~1000 aten ops here, a dozen of them host syncs.
    ops = aten_ops(BatchAugment(), torch.rand(128, 3, 28, 28))
    assert not SYNC_OPS & set(ops)
    assert len(ops) < 150


def test_runs_the_same_ops_whatever_the_data_and_draws():
    aug = BatchAugment()
    torch.manual_seed(0)
    a = aten_ops(aug, torch.rand(64, 3, 28, 28))
    torch.manual_seed(1)
    b = aten_ops(aug, torch.zeros(64, 3, 28, 28))
    assert a == b


def test_reproducible_from_the_default_generator():
    x = torch.rand(16, 3, 28, 28)
    aug = BatchAugment()
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(aug(x))
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device_and_range(dtype):
    torch.manual_seed(0)
    x = torch.rand(32, 3, 28, 28, dtype=dtype)
    out = BatchAugment()(x)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, x)


# --- robustness stages: darkening, blur, occlusion (issue 33) ---

ROBUST = {"dark_p": 0.3, "blur_p": 0.2, "erase_p": 0.5}


def test_robust_stages_are_off_by_default_and_leave_the_other_draws_unchanged():
    assert all(getattr(BatchAugment().sample_params(4, "cpu"), f) is None for f in ("dark", "blur", "erase"))
    torch.manual_seed(0)
    plain = BatchAugment().sample_params(64, "cpu")
    torch.manual_seed(0)
    robust = BatchAugment(**ROBUST).sample_params(64, "cpu")
    for field in ("angle", "shear", "scale", "translate", "brightness", "contrast", "color"):
        assert torch.equal(getattr(plain, field), getattr(robust, field)), field


def test_darkening_draws_gain_and_gamma_uniformly_on_its_share():
    torch.manual_seed(0)
    p = BatchAugment(dark_p=0.3, dark=(0.25, 0.7), gamma=(1.0, 2.0)).sample_params(40000, "cpu")
    gain, gamma = p.dark.unbind(1)
    on = gain != 1.0
    assert abs(on.float().mean() - 0.3) < 0.01
    assert (gamma[~on] == 1.0).all()
    for v, (lo, hi) in ((gain[on], (0.25, 0.7)), (gamma[on], (1.0, 2.0))):
        assert lo <= v.min() < lo + 0.01 and hi - 0.01 < v.max() <= hi
        assert abs(v.mean() - (lo + hi) / 2) < 0.01 * (hi - lo) + 1e-3
        assert abs(v.std() - (hi - lo) / math.sqrt(12)) < 0.01 * (hi - lo) + 1e-3


def test_darkening_applies_gain_times_power():
    x = torch.rand(2, 3, 8, 8)
    p = identity_params(2, False)._replace(dark=torch.tensor([[0.5, 2.0], [1.0, 1.0]]))
    out = BatchAugment(dark_p=1.0).apply(x, p)
    torch.testing.assert_close(out[0], 0.5 * x[0] ** 2, rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1], x[1], rtol=0, atol=1e-5)


def kernel_moments(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per kernel: its variance along x + y, and the share of its mass off the centre pixel."""
    r = k.shape[-1] // 2
    o = torch.arange(-r, r + 1, dtype=k.dtype)
    d2 = o.view(1, -1, 1) ** 2 + o.view(1, 1, -1) ** 2
    return (k * d2).sum((1, 2)), 1 - k[:, r, r]


def test_blur_kernels_are_normalised_and_blur_their_share():
    torch.manual_seed(0)
    k = BatchAugment(blur_p=0.2).sample_params(20000, "cpu").blur
    assert k.shape == (20000, 5, 5) and (k >= 0).all()
    torch.testing.assert_close(k.sum((1, 2)), torch.ones(20000))
    spread, off_centre = kernel_moments(k)
    blurred = off_centre > 1e-6
    assert abs(blurred.float().mean() - 0.2) < 0.01
    assert spread[~blurred].abs().max() < 1e-6  # the identity
    # A Gaussian of sigma >= 0.5 spreads at least 2 sigma^2 * (1 - truncation) = 0.5; a motion line of length >= 2 too.
    assert spread[blurred].min() > 0.3


def test_gaussian_and_motion_kernels_have_their_shape():
    torch.manual_seed(0)
    gauss = BatchAugment(blur_p=1.0, motion_share=0.0, blur_sigma=(0.8, 0.8)).sample_params(8, "cpu").blur
    torch.testing.assert_close(gauss, gauss[:1].expand_as(gauss))  # one sigma: one kernel
    torch.testing.assert_close(gauss[0], gauss[0].T)  # isotropic
    spread, _ = kernel_moments(gauss)
    assert spread[0] == pytest.approx(2 * 0.8 ** 2, rel=0.1)  # truncated at 2.5 sigma: a little less
    motion = BatchAugment(blur_p=1.0, motion_share=1.0, motion_length=(5.0, 5.0)).sample_params(4000, "cpu").blur
    # A line: most of its mass lies within one pixel of a line through the centre, in both directions.
    r = 2
    o = torch.arange(-r, r + 1, dtype=torch.float32)
    dy, dx = o.view(-1, 1), o.view(1, -1)
    cov_xx = (motion * dx * dx).sum((1, 2))
    cov_yy = (motion * dy * dy).sum((1, 2))
    cov_xy = (motion * dx * dy).sum((1, 2))
    tr, det = cov_xx + cov_yy, cov_xx * cov_yy - cov_xy ** 2
    minor = tr / 2 - torch.sqrt((tr / 2) ** 2 - det)
    major = tr - minor
    assert (major > 4 * minor).all()  # elongated, unlike a Gaussian
    torch.testing.assert_close(motion.flip(1, 2), motion, rtol=0, atol=1e-6)  # centred: symmetric through it


def test_blur_keeps_a_flat_image_flat_up_to_its_edges():
    x = torch.full((4, 3, 12, 12), 0.6)
    torch.manual_seed(0)
    p = BatchAugment(blur_p=1.0).sample_params(4, "cpu")
    p = identity_params(4, False)._replace(blur=p.blur)
    torch.testing.assert_close(BatchAugment(blur_p=1.0).apply(x, p), x, rtol=0, atol=1e-5)


def test_erasing_covers_its_share_with_one_rectangle_of_the_drawn_area():
    torch.manual_seed(0)
    aug = BatchAugment(erase_p=0.5)
    n = 4000
    p = aug.sample_params(n, "cpu")
    x = torch.full((n, 3, 28, 28), 0.5)  # a drawn colour with all three channels at exactly 0.5: never
    out = aug.apply(x, identity_params(n, False)._replace(erase=p.erase, erase_color=p.erase_color))
    written = ((out - 0.5).abs() > 1e-4).any(1)  # (N, H, W); the identity warp rounds by ~1e-7
    share = written.float().mean((1, 2))
    erased = share > 0
    assert abs(erased.float().mean() - 0.5) < 0.03
    # Pixel-rounded areas: within the drawn 2-15% up to the rectangle's pixel edges.
    assert share[erased].min() > 0.005 and share[erased].max() < 0.2
    assert abs(share[erased].mean() - 0.085) < 0.01
    # One colour per rectangle, in [0, 1].
    i = int(torch.nonzero(erased)[0])
    colours = out[i][:, written[i]]
    torch.testing.assert_close(colours, colours[:, :1].expand_as(colours))
    torch.testing.assert_close(colours[:, 0], p.erase_color[i])
    # A rectangle: its rows and columns form one block.
    rows, cols = written[i].any(1), written[i].any(0)
    assert written[i].sum() == rows.sum() * cols.sum()


@pytest.mark.parametrize("kwargs,match", [({"dark_p": 1.5}, "dark_p"), ({"erase_p": -0.1}, "erase_p"),
                                          ({"dark": (0.8, 0.2)}, "dark"), ({"motion_length": (2, 9)}, "motion_length")])
def test_bad_robust_arguments_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchAugment(**kwargs)


def test_robust_forward_has_no_host_sync_and_the_same_ops_whatever_the_draws():
    aug = BatchAugment(**ROBUST)
    torch.manual_seed(0)
    a = aten_ops(aug, torch.rand(64, 3, 28, 28).contiguous(memory_format=torch.channels_last))
    torch.manual_seed(1)
    b = aten_ops(aug, torch.zeros(64, 3, 28, 28).contiguous(memory_format=torch.channels_last))
    assert not SYNC_OPS & set(a)
    assert a == b


def test_robust_output_keeps_shape_layout_and_range():
    torch.manual_seed(0)
    x = torch.rand(32, 3, 28, 28).contiguous(memory_format=torch.channels_last)
    out = BatchAugment(**ROBUST)(x)
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert out.min() >= 0 and out.max() <= 1


# --- framing: crops between the ROI and the whole frame (issue 33) ---

def random_rois(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(n, 2, generator=g) * 0.3
    return torch.cat([lo, lo + 0.4 + torch.rand(n, 2, generator=g) * 0.3], dim=1)


def test_framing_zero_crops_every_sample_to_its_roi():
    rois = random_rois(100)
    torch.testing.assert_close(BatchAugment(framing=0.0).sample_crops(rois), rois)


def test_framing_crops_contain_the_roi_stay_in_the_frame_and_cover_the_range():
    rois = random_rois(20000)
    torch.manual_seed(0)
    crops = BatchAugment(framing=0.6).sample_crops(rois)
    eps = 1e-6
    assert (crops[:, :2] <= rois[:, :2] + eps).all() and (crops[:, 2:] >= rois[:, 2:] - eps).all()
    assert (crops >= -eps).all() and (crops <= 1 + eps).all()
    loose = (crops - rois).abs().amax(1) > 1e-6
    assert abs(loose.float().mean() - 0.6) < 0.02
    # The side is drawn uniformly between the ROI's and the frame's: half way on average.
    t = ((crops[:, 2] - crops[:, 0]) - (rois[:, 2] - rois[:, 0])) / (1 - (rois[:, 2] - rois[:, 0]))
    assert abs(t[loose].mean() - 0.5) < 0.02 and t[loose].max() > 0.99
    # Some reach the whole frame's width; offsets vary (not always centred on the ROI).
    centre_shift = ((crops[:, 0] + crops[:, 2]) - (rois[:, 0] + rois[:, 2])) / 2
    assert centre_shift[loose].std() > 0.02


def test_a_tight_crop_of_the_frame_matches_the_packed_roi_crop():
    # The grid_sample crop of the ROI against PIL's resize of the same box (what `gtsrb pack --roi` stores).
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(0)
    noise = Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8))
    frame = np.asarray(noise.filter(ImageFilter.GaussianBlur(1.5)))  # smooth, like a photo at this scale
    box_px = (4.0, 5.0, 28.0, 27.0)
    pil = np.asarray(Image.fromarray(frame).resize((28, 28), Image.Resampling.BILINEAR, box=box_px), np.float32) / 255
    x = torch.from_numpy(frame.copy()).permute(2, 0, 1)[None].float() / 255
    box = torch.tensor([[box_px[0] / 32, box_px[1] / 32, box_px[2] / 32, box_px[3] / 32]])
    aug = BatchAugment(framing=0.0, out_size=28)
    p = identity_params(1, False)
    out = aug.apply(x, p, aug.sample_crops(box))[0].permute(1, 2, 0).numpy()
    assert out.shape == (28, 28, 3)
    assert np.abs(out - pil).mean() < 0.01


def test_framing_forward_outputs_the_model_size_from_larger_frames():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 32)
    out = BatchAugment(framing=0.5, out_size=28, dark_p=0.3, blur_p=0.2, erase_p=0.5)(x, random_rois(8))
    assert out.shape == (8, 3, 28, 28) and out.min() >= 0 and out.max() <= 1
