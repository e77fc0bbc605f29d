"""Tests of the synthetic face generator and of the data sets that `synthesize` writes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pocketnas.data.images import decode_image
from pocketnas.data.recordio import FaceRecordSet
from pocketnas.data.synth import (
    Nuisance,
    SynthSummary,
    draw_face,
    fold_count,
    identity_traits,
    image_rng,
    load_manifest,
    plan_verification_pairs,
    sample_identity,
    synthesize,
    verification_identity_count,
)
from pocketnas.data.verification_bin import load_verification_bin
from pocketnas.errors import ConfigError, DataError, PocketNasError
from pocketnas.evaluation.verification import evaluate_verification, raw_pixel_embeddings

OUTPUT_FILES = ("train.rec", "train.idx", "property", "verification.bin", "synth.json")


def _digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in OUTPUT_FILES}


def _synthesize_tiny(folder: Path) -> SynthSummary:
    """Write the smallest valid set: 2 identities of 1 image, 2 pairs, 16x16."""
    return synthesize(
        folder,
        identities=2,
        images_per_identity=1,
        pairs=2,
        seed=0,
        image_size=16,
        show_progress=False,
    )


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synth") / "small"
    synthesize(
        folder,
        identities=6,
        images_per_identity=3,
        pairs=40,
        seed=7,
        image_size=32,
        show_progress=False,
    )
    return folder


@pytest.mark.parametrize("size", [32, 112])
def test_draw_face_returns_uint8_rgb_with_contrast(size: int) -> None:
    image = draw_face(identity_traits(0, 3), image_rng(0, 3, 0), size)
    assert image.shape == (size, size, 3)
    assert image.dtype == np.uint8
    assert int(image.max()) - int(image.min()) > 60


def test_draw_face_is_deterministic_for_a_seed() -> None:
    traits = identity_traits(5, 2)
    first = draw_face(traits, image_rng(5, 2, 4), 48)
    again = draw_face(identity_traits(5, 2), image_rng(5, 2, 4), 48)
    other_image = draw_face(traits, image_rng(5, 2, 5), 48)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other_image)


def test_draw_face_rejects_tiny_sizes() -> None:
    with pytest.raises(ConfigError, match="at least 8"):
        draw_face(identity_traits(0, 0), image_rng(0, 0, 0), 4)


def test_identities_have_different_traits() -> None:
    traits = [identity_traits(0, identity) for identity in range(20)]
    assert len({t.face_half_width for t in traits}) == 20
    assert len({t.hair_color for t in traits}) == 20
    assert sample_identity(np.random.default_rng(1)) == sample_identity(np.random.default_rng(1))


def test_draw_face_without_nuisance_repeats_identity() -> None:
    traits = identity_traits(0, 1)
    images = [draw_face(traits, image_rng(0, 1, k), 32, Nuisance.none()) for k in range(3)]
    np.testing.assert_array_equal(images[0], images[1])
    np.testing.assert_array_equal(images[0], images[2])
    other = draw_face(identity_traits(0, 2), image_rng(0, 2, 0), 32, Nuisance.none())
    assert np.abs(images[0].astype(int) - other.astype(int)).mean() > 5


def test_identity_outweighs_nuisance_in_coarse_layout() -> None:
    """Images of one identity correlate more than images of two, despite the nuisance.

    The feature is the 8x8 block-mean image with its own mean removed, which ignores fine detail
    and overall brightness. For these 16 identities of 6 images the gap in mean correlation was
    0.21 and the AUC 0.70 when the test was written. The bounds leave room for changes to the
    drawing but fail when nuisance drowns identity, which gives a gap near 0 and an AUC near 0.5.
    """
    identities, per_identity = 16, 6
    images = np.stack(
        [
            draw_face(identity_traits(0, identity), image_rng(0, identity, k), 32)
            for identity in range(identities)
            for k in range(per_identity)
        ]
    ).astype(np.float64)
    labels = np.repeat(np.arange(identities), per_identity)
    coarse = images.reshape(len(images), 8, 4, 8, 4, 3).mean(axis=(2, 4)).reshape(len(images), -1)
    coarse -= coarse.mean(axis=1, keepdims=True)
    coarse /= np.linalg.norm(coarse, axis=1, keepdims=True)
    correlation = coarse @ coarse.T
    same = (labels[:, None] == labels[None, :]) & ~np.eye(len(labels), dtype=bool)
    different = labels[:, None] != labels[None, :]
    same_scores, different_scores = correlation[same], correlation[different]
    assert same_scores.mean() - different_scores.mean() > 0.08
    auc = (same_scores[:, None] > different_scores[None, :]).mean()
    assert auc > 0.6
    # The nuisance is real: images of one identity are far from identical.
    assert same_scores.mean() < 0.7


@pytest.mark.parametrize(("pairs", "folds"), [(600, 10), (40, 10), (30, 5), (8, 2), (6, 1)])
def test_fold_count(pairs: int, folds: int) -> None:
    assert fold_count(pairs) == folds


def test_plan_pairs_balanced_unseen_folds() -> None:
    identities, pairs = 50, 200
    planned = plan_verification_pairs(identities, images_per_identity=5, pairs=pairs, seed=3)
    assert len(planned) == pairs
    per_fold = pairs // 10
    fold_identities = []
    for fold in range(10):
        block = planned[fold * per_fold : (fold + 1) * per_fold]
        assert [p.is_same for p in block] == [True] * (per_fold // 2) + [False] * (per_fold // 2)
        ids = set()
        for pair in block:
            assert pair.identity_a >= identities
            assert pair.identity_b >= identities
            assert (pair.identity_a == pair.identity_b) == pair.is_same
            if pair.is_same:
                assert pair.image_a != pair.image_b
            ids |= {pair.identity_a, pair.identity_b}
        fold_identities.append(ids)
    # Like LFW's folds, no identity appears in two folds.
    for a in range(10):
        for b in range(a + 1, 10):
            assert not fold_identities[a] & fold_identities[b]
    used = set().union(*fold_identities)
    assert max(used) < identities + verification_identity_count(pairs)


def test_plan_rejects_odd_pair_counts() -> None:
    with pytest.raises(ConfigError, match="even"):
        plan_verification_pairs(10, 2, 21, 0)


def test_synthesize_writes_readable_training_and_verification_files(small_set: Path) -> None:
    records = FaceRecordSet(small_set)
    assert records.num_classes == 6
    assert records.image_size == (32, 32)
    assert len(records) == 18
    assert list(records.labels) == sorted(records.labels)
    assert set(records.labels.tolist()) == set(range(6))
    assert records.read_image(0).shape == (32, 32, 3)

    images, issame = load_verification_bin(small_set / "verification.bin")
    assert len(images) == 80
    assert len(issame) == 40
    assert decode_image(images[0]).shape == (32, 32, 3)
    per_fold = issame.reshape(10, 4)
    assert per_fold[:, :2].all()
    assert not per_fold[:, 2:].any()


def test_manifest_records_disjoint_identities_and_pairs(small_set: Path) -> None:
    manifest = json.loads((small_set / "synth.json").read_text())
    assert manifest["identities"] == 6
    assert manifest["num_train_images"] == 18
    assert manifest["num_folds"] == 10
    assert manifest["nuisance"] == json.loads(json.dumps(dataclasses.asdict(Nuisance())))
    first_train, last_train = manifest["train_identity_ids"]
    first_verify, last_verify = manifest["verification_identity_ids"]
    assert (first_train, last_train) == (0, 5)
    assert first_verify > last_train
    pairs = manifest["verification_pairs"]
    assert len(pairs) == 40
    assert sum(pair[4] for pair in pairs) == 20
    for id_a, _, id_b, _, _ in pairs:
        assert first_verify <= id_a <= last_verify
        assert first_verify <= id_b <= last_verify


def test_load_manifest_reads_and_reports_missing(small_set: Path, tmp_path: Path) -> None:
    assert load_manifest(small_set)["pairs"] == 40
    with pytest.raises(DataError, match="not found"):
        load_manifest(tmp_path)


def test_synthesize_deterministic_across_workers(small_set: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    summary = synthesize(
        again,
        identities=6,
        images_per_identity=3,
        pairs=40,
        seed=7,
        image_size=32,
        show_progress=False,
        workers=2,
    )
    assert summary.num_train_images == 18
    assert summary.num_pairs == 40
    assert _digests(again) == _digests(small_set)

    other = tmp_path / "other"
    synthesize(
        other,
        identities=6,
        images_per_identity=3,
        pairs=40,
        seed=8,
        image_size=32,
        show_progress=False,
    )
    other_digests = _digests(other)
    for name in ("train.rec", "verification.bin"):
        assert other_digests[name] != _digests(small_set)[name]


def test_raw_pixel_cosine_verifies_poorly(tmp_path: Path) -> None:
    """Comparing pixels must not solve the task: the demo's baseline stays at or under 0.75."""
    summary = synthesize(
        tmp_path / "pairs",
        identities=2,
        images_per_identity=1,
        pairs=400,
        seed=0,
        image_size=32,
        show_progress=False,
    )
    encoded, issame = load_verification_bin(summary.verification_bin)
    images = np.stack([decode_image(data) for data in encoded])
    accuracy = evaluate_verification(raw_pixel_embeddings(images), issame).accuracy
    assert accuracy <= 0.75
    assert accuracy >= 0.5  # pixels still carry some identity; below chance would mean a bug


def test_synthesize_rejects_a_missing_parent_folder(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "out"
    with pytest.raises(PocketNasError, match="neither the output folder"):
        _synthesize_tiny(target)


def test_synthesize_creates_the_folder_when_its_parent_exists(tmp_path: Path) -> None:
    summary = _synthesize_tiny(tmp_path / "new")
    assert summary.num_folds == 1
    for name in OUTPUT_FILES:
        assert (tmp_path / "new" / name).is_file()


def test_synthesize_rejects_a_file_as_output(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(PocketNasError, match="not a folder"):
        _synthesize_tiny(target)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("identities", 1, "at least 2 identities"),
        ("images_per_identity", 0, "images per identity"),
        ("pairs", 3, "even"),
        ("seed", -1, "non-negative"),
        ("image_size", 4, "at least 8"),
        ("jpeg_quality", 101, "JPEG quality"),
    ],
)
def test_synthesize_rejects_bad_options(
    tmp_path: Path, option: str, value: int, message: str
) -> None:
    options = {
        "identities": 2,
        "images_per_identity": 1,
        "pairs": 2,
        "seed": 0,
        "image_size": 16,
        "jpeg_quality": 90,
    }
    options[option] = value
    with pytest.raises(ConfigError, match=message):
        synthesize(tmp_path, show_progress=False, **options)
