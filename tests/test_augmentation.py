"""Training augmentation: crops and flips keep size, order and content, draw only from their generator, and
each dataset states its default."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustkit.augmentation import Augmentation, Crop, Flip, dataset_default, parse_augment, resolve_augment
from robustkit.errors import ParameterError
from robustkit.host import make_host

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def windows(padded: torch.Tensor, size: tuple[int, int]) -> list[torch.Tensor]:
    """Every size-shaped window of one padded image."""
    h, w = size
    return [padded[:, y:y + h, x:x + w] for y in range(padded.shape[1] - h + 1) for x in range(padded.shape[2] - w + 1)]


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_a_crop_is_a_window_of_the_padded_image_of_the_same_size(mode: str) -> None:
    images = torch.rand(16, 3, 8, 6, generator=generator(0))
    out = Crop(2, mode)(images, generator(1))
    assert out.shape == images.shape and out.dtype == images.dtype
    padded = F.pad(images, (2, 2, 2, 2), mode="reflect" if mode == "reflect" else "constant")
    for i in range(len(images)):  # image i stays image i (so its label still fits): a window of its own padding
        assert any(torch.equal(out[i], window) for window in windows(padded[i], (8, 6))), i
    offsets = {next(k for k, window in enumerate(windows(padded[i], (8, 6))) if torch.equal(out[i], window))
               for i in range(len(images))}
    assert len(offsets) > 4  # every image draws its own offset


def test_a_flip_mirrors_about_half_of_the_images_and_keeps_the_rest() -> None:
    images = torch.rand(64, 1, 5, 5, generator=generator(0))
    out = Flip()(images, generator(2))
    flipped = [torch.equal(out[i], images[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(out[i], images[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 16 < sum(flipped) < 48


def test_the_draws_come_only_from_the_generator_given() -> None:
    augmentation = parse_augment("crop:4:zero,flip")
    images = torch.rand(32, 3, 12, 12, generator=generator(0))
    torch.manual_seed(1)
    first = augmentation(images, generator(7))
    torch.manual_seed(2)  # the global RNG must not matter ...
    again = augmentation(images, generator(7))
    assert torch.equal(first, again)
    assert not torch.equal(first, augmentation(images, generator(8)))  # ... the generator's seed does
    state = torch.random.get_rng_state()
    augmentation(images, generator(9))
    assert torch.equal(state, torch.random.get_rng_state())  # and the global stream is left untouched


def test_the_text_is_parsed_into_its_canonical_form() -> None:
    assert parse_augment("none") == Augmentation() and not parse_augment("none")
    assert parse_augment("crop").text() == "crop:4:zero"
    assert parse_augment(" crop:2:REFLECT , flip ").text() == "crop:2:reflect,flip"
    assert parse_augment("flip,crop:4").ops == (Flip(), Crop(4, "zero"))


@pytest.mark.parametrize("text, fragment", [
    ("rotate", "'rotate' is not an operation"), ("crop:0", "padding must be a whole number of pixels from 1 to 64"),
    ("crop:4:wrap", "padding mode must be one of zero, reflect"), ("flip:2", "is not an operation"), ("", "augment"),
    ("default", "resolve it with the dataset"),
])
def test_bad_augmentations_are_named_in_one_line(text: str, fragment: str) -> None:
    with pytest.raises(ParameterError, match=fragment) as err:
        parse_augment(text)
    assert "\n" not in str(err.value)


def test_reflect_padding_as_large_as_the_image_is_refused() -> None:
    with pytest.raises(ParameterError, match="reflect padding must be smaller than the image"):
        Crop(8, "reflect")(torch.rand(2, 1, 8, 8), generator(0))


def test_each_dataset_states_its_default_augmentation() -> None:
    host = make_host(entry_points=False)
    for name in ("cifar10", "cifar100", "stl10", "cifar10-c"):
        assert dataset_default(host, name) == "crop:4:zero,flip", name
    for name in ("digits", "mnist", "imagefolder", "tensors", "not-registered"):
        assert dataset_default(host, name) == "none", name
    assert resolve_augment("default", "cifar10", host) == "crop:4:zero,flip"
    assert resolve_augment("DEFAULT", "digits", host) == "none"
    assert resolve_augment("crop:2", "digits", host) == "crop:2:zero"  # explicit wins over the dataset's
