"""IJB-B/C 1:1 verification on tiny sets in insightface's layout, against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pocketnas.cli import main
from pocketnas.config import RetrainConfig
from pocketnas.data.align import ARCFACE_TEMPLATE_112
from pocketnas.errors import DataError
from pocketnas.evaluation.ijb import (
    embed_ijb_images,
    evaluate_ijb,
    load_ijb_meta,
    roc_curve,
    tar_at_far,
    template_features,
)
from pocketnas.fileio import atomic_torch_save
from pocketnas.retrain.train import build_network, network_spec
from pocketnas.search_space.published import POCKETNET_GENOTYPE

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
# The colour vectors after the (x / 255 - 0.5) / 0.5 pixel scaling of the network input.
RED = np.array([1.0, -1.0, -1.0])
GREEN = np.array([-1.0, 1.0, -1.0])
BLUE = np.array([-1.0, -1.0, 1.0])

# (image colour, template id, media id, detector score)
IMAGES = [
    ("red", 1, 10, 1.0),
    ("red", 1, 10, 1.0),
    ("red", 2, 20, 1.0),
    ("green", 3, 30, 1.0),
    ("red", 4, 40, 1.0),
    ("red", 4, 40, 1.0),
    ("green", 4, 41, 0.5),
    ("blue", 5, 50, 1.0),
]
# (template 1, template 2, same person)
PAIRS = [(1, 2, 1), (1, 3, 0), (4, 2, 1), (2, 5, 0), (3, 5, 0), (4, 3, 0)]


class ChannelMean(nn.Module):
    """A stand-in network whose embedding is the mean of each colour channel."""

    image_size = 112

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))


def write_ijb(root: Path, name: str = "IJBB") -> Path:
    """Write solid-colour loose crops with landmarks 20 px right and 15 px below the template."""
    folder = root / name
    prefix = name.lower()
    (folder / "loose_crop").mkdir(parents=True)
    (folder / "meta").mkdir()
    landmarks = (ARCFACE_TEMPLATE_112 + np.array([20.0, 15.0])).ravel()
    landmark_lines, face_lines = [], []
    for index, (colour, template, media, score) in enumerate(IMAGES):
        file_name = f"{index + 1}.png"  # lossless, so the colours and scores are exact
        image = np.zeros((150, 160, 3), dtype=np.uint8)
        image[:] = COLOURS[colour]
        Image.fromarray(image).save(folder / "loose_crop" / file_name)
        numbers = " ".join(f"{value:.4f}" for value in landmarks)
        landmark_lines.append(f"{file_name} {numbers} {score}")
        face_lines.append(f"{file_name} {template} {media}")
    pair_lines = [f"{a} {b} {label}" for a, b, label in PAIRS]
    meta = folder / "meta"
    (meta / f"{prefix}_name_5pts_score.txt").write_text("\n".join(landmark_lines) + "\n")
    (meta / f"{prefix}_face_tid_mid.txt").write_text("\n".join(face_lines) + "\n")
    (meta / f"{prefix}_template_pair_label.txt").write_text("\n".join(pair_lines) + "\n")
    return folder


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def test_reads_insightface_layout(tmp_path: Path) -> None:
    meta = load_ijb_meta(write_ijb(tmp_path, "IJBC"))
    assert meta.name == "IJBC"
    assert meta.image_names.tolist() == [f"{i}.png" for i in range(1, 9)]
    assert meta.templates.tolist() == [1, 1, 2, 3, 4, 4, 4, 5]
    assert meta.medias.tolist() == [10, 10, 20, 30, 40, 40, 41, 50]
    assert meta.detector_scores.tolist() == [1.0] * 6 + [0.5, 1.0]
    shifted_template = ARCFACE_TEMPLATE_112 + np.array([20.0, 15.0])
    np.testing.assert_allclose(meta.landmarks[0], shifted_template, atol=1e-4)
    assert meta.pairs.tolist() == [[a, b] for a, b, _ in PAIRS]
    assert meta.labels.tolist() == [label for *_, label in PAIRS]


def test_aligned_embeddings_are_colours(tmp_path: Path) -> None:
    meta = load_ijb_meta(write_ijb(tmp_path))
    plain, flipped = embed_ijb_images(ChannelMean(), meta, batch_size=3)
    colours = {"red": RED, "green": GREEN, "blue": BLUE}
    expected = np.array([colours[colour] for colour, *_ in IMAGES])
    np.testing.assert_allclose(plain, expected, atol=1e-6)
    np.testing.assert_allclose(flipped, plain, atol=1e-6)
    _, no_flip = embed_ijb_images(ChannelMean(), meta, flip=False)
    assert no_flip is None


def test_known_tar_with_detector_scores(tmp_path: Path) -> None:
    """Template 4 = mean of media 40 (red) + 0.5 * green, so it leans to red."""
    result = evaluate_ijb(ChannelMean(), write_ijb(tmp_path))
    template_4 = unit(RED + 0.5 * GREEN)
    genuine_4 = float(template_4 @ unit(RED))  # 5 / sqrt(33) = 0.870
    impostor_4 = float(template_4 @ unit(GREEN))  # 1 / sqrt(33) = 0.174
    assert genuine_4 == pytest.approx(5 / np.sqrt(33))
    assert impostor_4 == pytest.approx(1 / np.sqrt(33))
    # Genuine scores 1 and 0.870 lie above every impostor (0.174, -1/3 three times), so the ROC
    # is (0, 0), (0, 1/2), (0, 1), (1/4, 1), (1, 1). The nearest points to every target FAR are
    # the three at FAR 0, and the highest TAR among them is 1.
    np.testing.assert_allclose(result.far, [0.0, 0.0, 0.0, 0.25, 1.0])
    np.testing.assert_allclose(result.tar, [0.0, 0.5, 1.0, 1.0, 1.0])
    assert result.tar_at_far == {far: 1.0 for far in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)}
    assert (result.pairs, result.images, result.templates) == (6, 8, 5)


def test_known_tar_without_detector_scores(tmp_path: Path) -> None:
    """Without weighting, template 4 is red + green, as near to green as to red (1 / sqrt 3)."""
    result = evaluate_ijb(ChannelMean(), write_ijb(tmp_path), detector_weighting=False)
    # Scores: genuine 1 and 1/sqrt(3); impostors 1/sqrt(3) (tie) and -1/3 three times.
    # ROC: (0, 0), (0, 1/2), (1/4, 1), (1, 1); the nearest point to FARs <= 0.1 is FAR 0.
    np.testing.assert_allclose(result.far, [0.0, 0.0, 0.25, 1.0])
    np.testing.assert_allclose(result.tar, [0.0, 0.5, 1.0, 1.0])
    assert set(result.tar_at_far.values()) == {0.5}


def test_roc_drops_collinear_points() -> None:
    genuine = [0.95, 0.9, 0.6, 0.3]
    impostor = [0.8, 0.5, 0.4, 0.35, 0.2, 0.15, 0.1, 0.05, 0.02, 0.01]
    scores = np.array(genuine + impostor)
    labels = np.array([1] * 4 + [0] * 10)
    far, tar, thresholds = roc_curve(labels, scores)
    # Worked by hand: (TP, FP) after each score from the top, keeping the points where the
    # curve changes direction, plus the first and last, behind (0, 0).
    np.testing.assert_allclose(far, [0, 0, 0, 0.1, 0.1, 0.4, 0.4, 1.0])
    np.testing.assert_allclose(tar, [0, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0])
    np.testing.assert_allclose(thresholds, [np.inf, 0.95, 0.9, 0.8, 0.6, 0.35, 0.3, 0.01])

    tars = tar_at_far(far, tar, (1e-4, 0.1, 0.3))
    assert tars[1e-4] == 0.5  # FAR 0 three times: the highest TAR
    assert tars[0.1] == 0.75
    # 0.3 is nearer FAR 0.4 than 0.1 once the collinear point (FAR 0.3, TAR 0.75) is gone.
    assert tars[0.3] == 1.0


def test_roc_merges_tied_scores() -> None:
    far, tar, thresholds = roc_curve(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.9, 0.1]))
    np.testing.assert_allclose(far, [0, 0, 0.5, 1.0])
    np.testing.assert_allclose(tar, [0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.5, 0.1])


def loop_template_features(
    features: np.ndarray, templates: np.ndarray, medias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Template pooling written as plain loops over templates and their media."""
    template_ids = np.unique(templates)
    pooled = np.zeros((len(template_ids), features.shape[1]))
    for row, template in enumerate(template_ids):
        in_template = templates == template
        for media in np.unique(medias[in_template]):
            members = features[in_template & (medias == media)]
            pooled[row] += members.mean(axis=0)
        pooled[row] /= np.linalg.norm(pooled[row])
    return template_ids, pooled


@pytest.mark.parametrize("seed", range(4))
def test_pooling_matches_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_images = 300
    features = rng.normal(size=(n_images, 16))
    templates = rng.integers(0, 40, n_images) * 7 + 1000
    medias = rng.integers(0, 5, n_images) + templates * 10 * rng.integers(0, 2)
    ids, pooled = template_features(features, templates, medias)
    expected_ids, expected = loop_template_features(features, templates, medias)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(pooled, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "suffix", ["face_tid_mid.txt", "template_pair_label.txt", "name_5pts_score.txt"]
)
def test_missing_meta_file(tmp_path: Path, suffix: str) -> None:
    folder = write_ijb(tmp_path)
    missing = folder / "meta" / f"ijbb_{suffix}"
    missing.unlink()
    with pytest.raises(DataError) as caught:
        load_ijb_meta(folder)
    if suffix == "face_tid_mid.txt":
        assert str(caught.value).startswith(f"{missing}: IJB meta file not found")
    else:
        assert str(caught.value) == f"{missing}: IJB meta file not found"


def test_malformed_meta_rows(tmp_path: Path) -> None:
    folder = write_ijb(tmp_path)
    pair_file = folder / "meta" / "ijbb_template_pair_label.txt"
    pair_file.write_text("1 2 1\n1 3\n")
    with pytest.raises(DataError, match="line 2 has 2 fields; expected 3"):
        load_ijb_meta(folder)
    pair_file.write_text("1 2 1\n1 99 0\n")
    with pytest.raises(DataError, match=r"no image in ijbb_face_tid_mid\.txt, e\.g\. 99"):
        load_ijb_meta(folder)
    pair_file.write_text("1 2 yes\n")
    with pytest.raises(DataError, match="'yes' is not a number"):
        load_ijb_meta(folder)


def test_image_lists_must_agree(tmp_path: Path) -> None:
    folder = write_ijb(tmp_path)
    face_file = folder / "meta" / "ijbb_face_tid_mid.txt"
    lines = face_file.read_text().splitlines()
    face_file.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    with pytest.raises(DataError, match=r"row 1 names '2\.png'"):
        load_ijb_meta(folder)


def test_missing_image(tmp_path: Path) -> None:
    folder = write_ijb(tmp_path)
    (folder / "loose_crop" / "3.png").unlink()
    with pytest.raises(DataError, match=r"3\.png: IJB image not found"):
        evaluate_ijb(ChannelMean(), folder)


def test_coinciding_landmarks(tmp_path: Path) -> None:
    folder = write_ijb(tmp_path)
    landmark_file = folder / "meta" / "ijbb_name_5pts_score.txt"
    lines = landmark_file.read_text().splitlines()
    lines[2] = "3.png " + " ".join(["50.0"] * 10) + " 1.0"
    landmark_file.write_text("\n".join(lines) + "\n")
    expected = r"3\.png: cannot align the face \(the source points all coincide"
    with pytest.raises(DataError, match=expected):
        evaluate_ijb(ChannelMean(), folder)


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A retraining checkpoint of a 32x32 network, as the retraining loop stores its network."""
    config = RetrainConfig(channels=4, layers=4, embedding_size=8, image_size=32)
    spec = network_spec(POCKETNET_GENOTYPE, config)
    path = tmp_path / "last.pt"
    atomic_torch_save(
        path, {"kind": "retrain", "network": spec, "model": build_network(spec).state_dict()}
    )
    return path


def test_cli_eval_ijb(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    folder = write_ijb(tmp_path, "IJBC")
    args = ["-q", "eval", "--checkpoint", str(tiny_checkpoint), "--ijb", str(folder)]
    assert main(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["IJB", "set", "pairs"] + [
        f"TAR@{far}" for far in ("1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01")
    ]
    assert table[1].split()[:2] == ["IJBC", "6"]

    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    ijbc = result["ijb"]["IJBC"]
    assert (ijbc["pairs"], ijbc["images"], ijbc["templates"]) == (6, 8, 5)
    assert set(ijbc["tar_at_far"]) == {"1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01"}
    assert all(0.0 <= tar <= 1.0 for tar in ijbc["tar_at_far"].values())
    assert result["sets"] == {}


def test_cli_ijb_missing_meta(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    folder = write_ijb(tmp_path)
    missing = folder / "meta" / "ijbb_template_pair_label.txt"
    missing.unlink()
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--ijb", str(folder)]) == 2
    assert capsys.readouterr().err == f"pocketnas: error: {missing}: IJB meta file not found\n"
