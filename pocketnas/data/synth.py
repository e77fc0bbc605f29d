"""Procedurally drawn synthetic face identities for the demo and the tests.

Real face sets (MS1MV2, CASIA-WebFace, LFW) cannot be downloaded everywhere pocketnas runs, so the
demo and the tests train and evaluate on faces drawn here. The data is meant to be a real learning
problem rather than a smoke test:

* Identity lives in many independent traits (`IdentityTraits`): face and jaw shape, the geometry of
  eyes, brows, nose and mouth, skin, hair, iris and lip colours, hair style, moles, freckles, scars,
  glasses and facial hair. Most of them are large enough to survive a 32x32 drawing.
* Every image adds the nuisance of a real aligned face set (`Nuisance`). That is pose (shift,
  in-plane rotation, scale, a little yaw and pitch), expression, and lighting (gain, gradient and
  colour cast). Backgrounds are cluttered, clothing changes, and some images are occluded by
  sunglasses, masks, hats, hands or objects. Blur, sensor noise and JPEG compression follow.
  With the default strengths, cosine similarity of raw pixels verifies pairs poorly while a small
  CNN trained on other identities verifies them well.

`synthesize` writes an insightface-style training set (`train.rec`, `train.idx`, `property`), a
verification file laid out like `lfw.bin` whose pairs come from identities that are not in the
training set, and `synth.json` with the parameters and counts.

Every image is drawn from its own generator, seeded by (seed, identity, image), so a data set is
the same byte for byte for a seed, whatever the number of worker processes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pocketnas.data.images import encode_jpeg
from pocketnas.data.recordio import write_face_record_set
from pocketnas.data.verification_bin import write_verification_bin
from pocketnas.errors import ConfigError, DataError, PocketNasError
from pocketnas.fileio import atomic_write_json

logger = logging.getLogger(__name__)

SYNTH_FORMAT_VERSION = 1
"""Version of the drawing code and of `synth.json`, bumped whenever a seed draws other images."""

# Stream tags keep the generators of traits, images and pairs independent for one seed.
_TRAIT_STREAM = 1
_IMAGE_STREAM = 2
_PAIR_STREAM = 3
# Verification images use image indices from this offset, so that no verification image repeats
# a training image even if the identity ranges were ever to overlap.
_VERIFICATION_IMAGE_OFFSET = 1_000_000

Color = tuple[float, float, float]

HAIR_STYLES = ("bald", "buzz", "short", "medium", "long", "volume")
"""Hair styles; "medium" ends near the chin, "long" below the frame, "volume" is a wide afro."""
_HAIR_STYLE_WEIGHTS = (0.07, 0.12, 0.30, 0.19, 0.24, 0.08)
FACIAL_HAIR_STYLES = ("none", "stubble", "moustache", "goatee", "beard")
_FACIAL_HAIR_WEIGHTS = (0.62, 0.10, 0.08, 0.08, 0.12)

# Skin tones from light to dark, as sRGB in [0, 1]; a trait picks a point on this ramp.
_SKIN_RAMP = np.array(
    [
        (0.97, 0.82, 0.71),
        (0.90, 0.70, 0.56),
        (0.78, 0.56, 0.41),
        (0.58, 0.38, 0.25),
        (0.36, 0.23, 0.15),
    ]
)
_HAIR_PALETTE = np.array(
    [
        (0.07, 0.06, 0.05),  # black
        (0.20, 0.13, 0.08),  # dark brown
        (0.38, 0.25, 0.15),  # brown
        (0.48, 0.20, 0.10),  # auburn
        (0.75, 0.38, 0.15),  # ginger
        (0.62, 0.50, 0.30),  # dark blonde
        (0.88, 0.77, 0.52),  # blonde
        (0.55, 0.55, 0.54),  # grey
        (0.90, 0.90, 0.87),  # white
        (0.25, 0.30, 0.70),  # dyed blue
        (0.80, 0.35, 0.60),  # dyed pink
    ]
)
_HAIR_WEIGHTS = np.array([0.22, 0.18, 0.14, 0.07, 0.06, 0.09, 0.09, 0.06, 0.04, 0.025, 0.025])
_IRIS_PALETTE = np.array(
    [
        (0.22, 0.13, 0.07),  # dark brown
        (0.42, 0.30, 0.14),  # hazel
        (0.28, 0.45, 0.25),  # green
        (0.30, 0.48, 0.70),  # blue
        (0.50, 0.55, 0.60),  # grey
    ]
)
_FRAME_PALETTE = np.array(
    [
        (0.05, 0.05, 0.05),
        (0.35, 0.20, 0.10),
        (0.80, 0.65, 0.25),
        (0.75, 0.75, 0.78),
        (0.70, 0.10, 0.10),
        (0.10, 0.20, 0.55),
    ]
)


@dataclass(frozen=True)
class Mark:
    """A small mark at a fixed place on one identity's face (a mole or a birthmark).

    Positions are in face coordinates: the face image spans [-1, 1] on both axes, u to the right
    and v downwards, before the per-image pose moves the face.
    """

    u: float
    v: float
    radius: float
    color: Color
    opacity: float


@dataclass(frozen=True)
class IdentityTraits:
    """Everything that stays the same across the images of one synthetic identity.

    Lengths are in face coordinates (the image spans [-1, 1], v points down) and colours are sRGB
    in [0, 1]. Per-image nuisance (pose, expression, lighting, occluders) is not part of it.
    """

    # Face outline: an ellipse whose lower half narrows towards the chin.
    face_center_v: float
    face_half_width: float
    face_half_height: float
    jaw_taper: float
    skin: Color
    # Eyes, mirrored about the face centre line.
    eye_v: float
    eye_half_spacing: float
    eye_half_width: float
    eye_openness: float
    eye_tilt: float
    iris: Color
    # Brows: a parabola per side, `brow_slope` > 0 lowers the outer end.
    brow_gap: float
    brow_thickness: float
    brow_arch: float
    brow_slope: float
    brow_length: float
    brow_color: Color
    # Nose and mouth; `mouth_curve` > 0 turns the corners up.
    nose_v: float
    nose_half_width: float
    mouth_v: float
    mouth_half_width: float
    upper_lip: float
    lower_lip: float
    mouth_curve: float
    lip_color: Color
    ear_size: float
    # Hair.
    hair_style: str
    hair_color: Color
    hairline_depth: float
    hair_volume: float
    fringe: float
    parting: float
    hair_texture_angle: float
    # Marks, glasses and facial hair.
    moles: tuple[Mark, ...]
    freckles: float
    freckle_phases: tuple[float, ...]
    scar: tuple[float, float, float, float] | None
    glasses: bool
    glasses_round: bool
    glasses_size: float
    glasses_color: Color
    facial_hair: str
    facial_hair_density: float


@dataclass(frozen=True)
class Nuisance:
    """Strengths of the per-image nuisance; with `Nuisance.none()` all images of an identity match.

    Lengths are in face coordinates (the image spans [-1, 1]), so an image drawn at 32x32 shows the
    same scene as one drawn at 112x112. With the defaults, raw-pixel cosine similarity verified
    1,200 pairs at 0.67 (32x32) to 0.69 (112x112) accuracy under insightface's 10-fold protocol.

    Attributes:
        max_shift: Largest translation of the face along each axis.
        max_rotation_deg: Largest in-plane rotation, in degrees.
        max_scale_change: Largest relative change of the face size.
        max_yaw: Largest sideways shift of the inner features against the outline (head turn).
        max_pitch: Largest vertical shift of the inner features (head nod).
        smile_probability: Share of images with a smile.
        open_mouth_probability: Share of images with an open mouth.
        blink_probability: Share of images with (half) closed eyes.
        brow_raise_probability: Share of images with raised brows.
        max_gaze: Largest shift of the irises, as a fraction of the eye width.
        gain_range: Range of the overall brightness factor, drawn log-uniformly.
        max_gradient: Largest relative brightness change from the image centre to an edge, along
            the light direction.
        max_color_cast: Largest relative change of each colour channel.
        gamma_range: Range of the gamma applied after lighting.
        max_clutter: Largest number of out-of-focus shapes in the background.
        occlusion_probability: Share of images with one occluder (sunglasses, mask, hat, hand or
            object).
        blur_probability: Share of images that are blurred.
        max_blur: Largest Gaussian blur sigma, in face coordinates.
        max_noise: Largest standard deviation of the sensor noise, in 0-255 pixel units.
        random_scene: Draw background, clothing colour and light direction at random. When
            False, the background is grey and the light comes from above.
    """

    max_shift: float = 0.07
    max_rotation_deg: float = 9.0
    max_scale_change: float = 0.08
    max_yaw: float = 0.07
    max_pitch: float = 0.04
    smile_probability: float = 0.45
    open_mouth_probability: float = 0.25
    blink_probability: float = 0.08
    brow_raise_probability: float = 0.2
    max_gaze: float = 0.3
    gain_range: tuple[float, float] = (0.6, 1.4)
    max_gradient: float = 0.5
    max_color_cast: float = 0.14
    gamma_range: tuple[float, float] = (0.85, 1.2)
    max_clutter: int = 5
    occlusion_probability: float = 0.2
    blur_probability: float = 0.5
    max_blur: float = 0.03
    max_noise: float = 8.0
    random_scene: bool = True

    @classmethod
    def none(cls) -> Nuisance:
        """Return strengths that switch all nuisance off (centred pose, neutral light, no noise)."""
        return cls(
            max_shift=0.0,
            max_rotation_deg=0.0,
            max_scale_change=0.0,
            max_yaw=0.0,
            max_pitch=0.0,
            smile_probability=0.0,
            open_mouth_probability=0.0,
            blink_probability=0.0,
            brow_raise_probability=0.0,
            max_gaze=0.0,
            gain_range=(1.0, 1.0),
            max_gradient=0.0,
            max_color_cast=0.0,
            gamma_range=(1.0, 1.0),
            max_clutter=0,
            occlusion_probability=0.0,
            blur_probability=0.0,
            max_blur=0.0,
            max_noise=0.0,
            random_scene=False,
        )


DEFAULT_NUISANCE = Nuisance()


@dataclass(frozen=True)
class SynthPreset:
    """Sizes of a synthetic data set, as the demo and `synthesize` use them."""

    identities: int
    images_per_identity: int
    pairs: int
    image_size: int = 112
    jpeg_quality: int = 90


DEMO_PRESET = SynthPreset(identities=300, images_per_identity=20, pairs=1200, image_size=32)
"""A set that small CNNs learned to 0.95-0.97 verification accuracy in 2.5 minutes on 2 CPU cores.

Measured with a 310k-parameter plain CNN and a 250k-parameter PocketNet-cell network, each trained
with an ArcFace head on two AMD EPYC cores. Raw-pixel cosine similarity reached 0.67 on its pairs.
"""


@dataclass(frozen=True)
class VerificationPair:
    """One verification pair: two (identity, image index) references and whether they match."""

    identity_a: int
    image_a: int
    identity_b: int
    image_b: int
    is_same: bool


@dataclass(frozen=True)
class SynthSummary:
    """Paths and counts of a data set written by `synthesize`."""

    out_dir: Path
    train_rec: Path
    train_idx: Path
    property_path: Path
    verification_bin: Path
    manifest_path: Path
    num_classes: int
    num_train_images: int
    num_pairs: int
    num_folds: int
    verification_identity_ids: tuple[int, ...] = field(repr=False)
    seconds: float


# ----------------------------------------------------------------------------------------------
# Identity sampling


def _color(values: np.ndarray) -> Color:
    clipped = np.clip(values, 0.0, 1.0)
    return (float(clipped[0]), float(clipped[1]), float(clipped[2]))


def _skin_tone(rng: np.random.Generator) -> np.ndarray:
    position = rng.uniform(0.0, len(_SKIN_RAMP) - 1)
    low = int(min(position, len(_SKIN_RAMP) - 2))
    frac = position - low
    tone = _SKIN_RAMP[low] * (1.0 - frac) + _SKIN_RAMP[low + 1] * frac
    # Undertone: warmer (redder) or more olive (yellower) skin of the same lightness.
    undertone = rng.uniform(-1.0, 1.0) * np.array([0.04, 0.0, -0.04])
    return tone * rng.uniform(0.93, 1.07) + undertone + rng.normal(0.0, 0.03, 3)


def sample_identity(rng: np.random.Generator) -> IdentityTraits:
    """Draw the traits of one identity.

    The ranges keep faces plausible and roughly aligned like insightface's 112x112 crops (eyes
    near v = -0.1, mouth near v = 0.55) while leaving enough spread in every trait that two
    identities rarely agree on all of them.
    """
    skin = _skin_tone(rng)
    face_center_v = rng.uniform(0.02, 0.12)
    face_half_width = rng.uniform(0.54, 0.78)
    face_half_height = rng.uniform(0.78, 0.96)
    eye_v = rng.uniform(-0.18, -0.03)
    nose_v = eye_v + rng.uniform(0.26, 0.42)
    mouth_v = nose_v + rng.uniform(0.15, 0.27)

    style = str(rng.choice(HAIR_STYLES, p=_HAIR_STYLE_WEIGHTS))
    hair = _HAIR_PALETTE[rng.choice(len(_HAIR_PALETTE), p=_HAIR_WEIGHTS)]
    hair = hair * rng.uniform(0.85, 1.15) + rng.normal(0.0, 0.02, 3)
    # Brows are usually darker than the scalp hair, most visibly for blond and grey hair.
    brow = hair * rng.uniform(0.45, 0.85) + skin * 0.1
    lip_red = np.array([0.72, 0.26, 0.30])
    lips = skin * rng.uniform(0.55, 0.8) + lip_red * rng.uniform(0.15, 0.35)

    moles = []
    for _ in range(min(int(rng.poisson(1.1)), 4)):
        moles.append(
            Mark(
                u=float(rng.uniform(-0.75, 0.75) * face_half_width),
                v=float(face_center_v + rng.uniform(-0.35, 0.8) * face_half_height),
                radius=float(rng.uniform(0.015, 0.035)),
                color=_color(np.array([0.28, 0.17, 0.12]) * rng.uniform(0.7, 1.3)),
                opacity=float(rng.uniform(0.7, 1.0)),
            )
        )
    if rng.random() < 0.06:  # birthmark: a large, faint reddish patch
        moles.append(
            Mark(
                u=float(rng.uniform(-0.6, 0.6) * face_half_width),
                v=float(face_center_v + rng.uniform(-0.4, 0.6) * face_half_height),
                radius=float(rng.uniform(0.08, 0.16)),
                color=_color(np.array([0.65, 0.2, 0.25])),
                opacity=float(rng.uniform(0.3, 0.5)),
            )
        )
    scar = None
    if rng.random() < 0.1:
        u0 = rng.uniform(-0.6, 0.6) * face_half_width
        v0 = face_center_v + rng.uniform(-0.5, 0.6) * face_half_height
        angle = rng.uniform(0.0, math.pi)
        length = rng.uniform(0.1, 0.25)
        scar = (
            float(u0),
            float(v0),
            float(u0 + length * math.cos(angle)),
            float(v0 + length * math.sin(angle)),
        )
    facial_hair = str(rng.choice(FACIAL_HAIR_STYLES, p=_FACIAL_HAIR_WEIGHTS))
    return IdentityTraits(
        face_center_v=float(face_center_v),
        face_half_width=float(face_half_width),
        face_half_height=float(face_half_height),
        jaw_taper=float(rng.uniform(0.0, 0.45)),
        skin=_color(skin),
        eye_v=float(eye_v),
        eye_half_spacing=float(rng.uniform(0.23, 0.35)),
        eye_half_width=float(rng.uniform(0.085, 0.13)),
        eye_openness=float(rng.uniform(0.35, 0.62)),
        eye_tilt=float(rng.uniform(-0.2, 0.2)),
        iris=_color(_IRIS_PALETTE[rng.integers(len(_IRIS_PALETTE))] * rng.uniform(0.8, 1.2)),
        brow_gap=float(rng.uniform(0.10, 0.19)),
        brow_thickness=float(rng.uniform(0.025, 0.07)),
        brow_arch=float(rng.uniform(0.0, 0.05)),
        brow_slope=float(rng.uniform(-0.25, 0.3)),
        brow_length=float(rng.uniform(0.11, 0.17)),
        brow_color=_color(brow),
        nose_v=float(nose_v),
        nose_half_width=float(rng.uniform(0.07, 0.15)),
        mouth_v=float(mouth_v),
        mouth_half_width=float(rng.uniform(0.15, 0.27)),
        upper_lip=float(rng.uniform(0.015, 0.045)),
        lower_lip=float(rng.uniform(0.025, 0.065)),
        mouth_curve=float(rng.uniform(-0.04, 0.04)),
        lip_color=_color(lips),
        ear_size=float(rng.uniform(0.10, 0.17)),
        hair_style=style,
        hair_color=_color(hair),
        hairline_depth=float(rng.uniform(0.12, 0.34)),
        hair_volume=float(rng.uniform(0.03, 0.16)),
        fringe=float(rng.uniform(0.0, 1.0) if rng.random() < 0.3 else 0.0),
        parting=float(rng.uniform(-0.35, 0.35)),
        hair_texture_angle=float(rng.uniform(0.0, math.pi)),
        moles=tuple(moles),
        freckles=float(rng.uniform(0.4, 1.0) if rng.random() < 0.2 else 0.0),
        freckle_phases=tuple(float(x) for x in rng.uniform(0.0, 2 * math.pi, 6)),
        scar=scar,
        glasses=bool(rng.random() < 0.25),
        glasses_round=bool(rng.random() < 0.5),
        glasses_size=float(rng.uniform(1.3, 1.7)),
        glasses_color=_color(_FRAME_PALETTE[rng.integers(len(_FRAME_PALETTE))]),
        facial_hair=facial_hair,
        facial_hair_density=float(rng.uniform(0.55, 0.95)),
    )


def identity_traits(seed: int, identity: int) -> IdentityTraits:
    """Return the traits of identity number `identity` of the data set drawn with `seed`."""
    return sample_identity(np.random.default_rng([seed, _TRAIT_STREAM, identity]))


def image_rng(seed: int, identity: int, image: int) -> np.random.Generator:
    """Return the generator of the nuisance of one image, independent of every other image."""
    return np.random.default_rng([seed, _IMAGE_STREAM, identity, image])


# ----------------------------------------------------------------------------------------------
# Soft shapes on a coordinate grid
#
# Shapes are signed distances (negative inside) in face coordinates. `_fill` and `_band` turn them
# into coverage with an edge one output pixel wide, which anti-aliases without supersampling.


def _fill(distance: np.ndarray, aa: float) -> np.ndarray:
    return np.clip(0.5 - distance / aa, 0.0, 1.0)


def _band(distance: np.ndarray, half_thickness: float, aa: float) -> np.ndarray:
    """Return the coverage of a line `2 * half_thickness` wide at `distance` from its centre.

    It is the exact overlap of a pixel-wide box with the line, so lines thinner than a pixel fade
    in proportion to their width instead of staying half opaque.
    """
    d = np.abs(distance)
    half_aa = 0.5 * aa
    overlap = np.minimum(d + half_aa, half_thickness) - np.maximum(d - half_aa, -half_thickness)
    return np.clip(overlap / aa, 0.0, 1.0)


def _ellipse(
    u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float, angle: float = 0.0
) -> np.ndarray:
    """Approximate signed distance to an ellipse: its implicit function over its gradient."""
    du = u - cu
    dv = v - cv
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        du, dv = c * du + s * dv, c * dv - s * du
    x = du / ru
    y = dv / rv
    q = x * x + y * y
    grad = 2.0 * np.sqrt((x / ru) ** 2 + (y / rv) ** 2) + 1e-6
    return (q - 1.0) / grad


def _superellipse(
    u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float
) -> np.ndarray:
    """Approximate signed distance to a rounded rectangle |x|^4 + |y|^4 = 1."""
    x = (u - cu) / ru
    y = (v - cv) / rv
    x2 = x * x
    y2 = y * y
    q = x2 * x2 + y2 * y2
    grad = 4.0 * np.sqrt((x2 * x / ru) ** 2 + (y2 * y / rv) ** 2) + 1e-6
    return (q - 1.0) / grad


def _segment(
    u: np.ndarray, v: np.ndarray, u0: float, v0: float, u1: float, v1: float
) -> np.ndarray:
    """Distance to the segment from (u0, v0) to (u1, v1)."""
    du, dv = u1 - u0, v1 - v0
    length2 = du * du + dv * dv + 1e-12
    t = np.clip(((u - u0) * du + (v - v0) * dv) / length2, 0.0, 1.0)
    return np.hypot(u - u0 - t * du, v - v0 - t * dv)


def _paint(target: np.ndarray, alpha: np.ndarray, color: Any) -> None:
    """Composite `color` (an RGB triple or an image) over `target` with coverage `alpha`."""
    target += alpha[..., None] * (np.asarray(color, dtype=np.float32) - target)


class _Canvas:
    """An RGB float image with the face coordinates of each pixel under one image's pose.

    `region` returns a view of the pixels around a face-coordinate circle, so that small features
    cost work in proportion to their area rather than to the image's.
    """

    def __init__(self, size: int, shift: tuple[float, float], angle: float, scale: float) -> None:
        self.size = size
        self.image = np.zeros((size, size, 3), dtype=np.float32)
        centers = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
        self.x = centers[None, :].repeat(size, axis=0)  # image coordinates, [-1, 1]
        self.y = centers[:, None].repeat(size, axis=1)
        # Face point q appears at pixel position p = scale * R(angle) q + shift.
        self._c, self._s = math.cos(angle), math.sin(angle)
        self._scale = scale
        self._shift = shift
        px = self.x - shift[0]
        py = self.y - shift[1]
        self.u = (self._c * px + self._s * py) / scale
        self.v = (-self._s * px + self._c * py) / scale
        self.aa = 2.0 / size / scale  # one pixel in face coordinates

    def region(
        self, cu: float, cv: float, radius: float
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
        """Return (slices, u, v) of the pixels within about `radius` of face point (cu, cv)."""
        x = self._scale * (self._c * cu - self._s * cv) + self._shift[0]
        y = self._scale * (self._s * cu + self._c * cv) + self._shift[1]
        half = self.size / 2.0
        r = radius * self._scale * half + 2.0
        cx = (x + 1.0) * half
        cy = (y + 1.0) * half
        c0 = max(int(cx - r), 0)
        c1 = min(math.ceil(cx + r), self.size)
        r0 = max(int(cy - r), 0)
        r1 = min(math.ceil(cy + r), self.size)
        if c1 <= c0 or r1 <= r0:
            c0 = c1 = r0 = r1 = 0
        slices = (slice(r0, r1), slice(c0, c1))
        return slices, self.u[slices], self.v[slices]


# ----------------------------------------------------------------------------------------------
# Per-image nuisance


@dataclass
class _Pose:
    shift: tuple[float, float]
    angle: float
    scale: float
    yaw: float
    pitch: float


@dataclass
class _Expression:
    smile: float
    mouth_open: float
    eye_open: float
    brow_raise: float
    gaze: tuple[float, float]


def _sample_pose(rng: np.random.Generator, nuisance: Nuisance) -> _Pose:
    return _Pose(
        shift=(
            float(rng.uniform(-1.0, 1.0) * nuisance.max_shift),
            float(rng.uniform(-1.0, 1.0) * nuisance.max_shift),
        ),
        angle=math.radians(float(rng.uniform(-1.0, 1.0) * nuisance.max_rotation_deg)),
        scale=float(1.0 + rng.uniform(-1.0, 1.0) * nuisance.max_scale_change),
        yaw=float(rng.uniform(-1.0, 1.0) * nuisance.max_yaw),
        pitch=float(rng.uniform(-1.0, 1.0) * nuisance.max_pitch),
    )


def _sample_expression(rng: np.random.Generator, nuisance: Nuisance) -> _Expression:
    draws = rng.random(4)
    return _Expression(
        smile=float(rng.uniform(0.3, 1.0)) if draws[0] < nuisance.smile_probability else 0.0,
        mouth_open=(
            float(rng.uniform(0.02, 0.08)) if draws[1] < nuisance.open_mouth_probability else 0.0
        ),
        eye_open=float(rng.uniform(0.0, 0.3)) if draws[2] < nuisance.blink_probability else 1.0,
        brow_raise=float(rng.uniform(0.02, 0.05))
        if draws[3] < nuisance.brow_raise_probability
        else 0.0,
        gaze=(
            float(rng.uniform(-1.0, 1.0) * nuisance.max_gaze),
            float(rng.uniform(-0.5, 0.5) * nuisance.max_gaze),
        ),
    )


def _random_color(rng: np.random.Generator) -> np.ndarray:
    """Draw a colour of any hue, with brightness spread over the whole range."""
    base = rng.random(3)
    saturation = rng.uniform(0.0, 1.0)
    brightness = rng.uniform(0.08, 0.95)
    gray = base.mean()
    color = gray + (base - gray) * saturation * 1.5
    return np.clip(color / max(float(color.max()), 1e-3) * brightness, 0.0, 1.0)


def _draw_background(canvas: _Canvas, rng: np.random.Generator, nuisance: Nuisance) -> None:
    """Fill the canvas with a gradient of two random colours and out-of-focus clutter."""
    first = _random_color(rng)
    second = _random_color(rng) if rng.random() < 0.7 else first
    angle = rng.uniform(0.0, 2 * math.pi)
    ramp = np.clip(0.5 + 0.5 * (canvas.x * math.cos(angle) + canvas.y * math.sin(angle)), 0, 1)
    canvas.image[...] = first + ramp[..., None] * (second - first)
    for _ in range(int(rng.integers(0, nuisance.max_clutter + 1))):
        color = _random_color(rng)
        cx, cy = rng.uniform(-1.1, 1.1, 2)
        rx, ry = rng.uniform(0.1, 0.6, 2)
        softness = rng.uniform(1.0, 8.0) * 2.0 / canvas.size
        if rng.random() < 0.5:
            d = _ellipse(canvas.x, canvas.y, cx, cy, rx, ry)
        else:
            d = np.maximum(np.abs(canvas.x - cx) - rx, np.abs(canvas.y - cy) - ry)
        _paint(canvas.image, _fill(d, softness) * rng.uniform(0.5, 1.0), color)


# ----------------------------------------------------------------------------------------------
# Face parts


def _hair_texture(u: np.ndarray, v: np.ndarray, traits: IdentityTraits, color: Any) -> np.ndarray:
    """Modulate the hair colour with strands along the identity's combing direction."""
    c, s = math.cos(traits.hair_texture_angle), math.sin(traits.hair_texture_angle)
    strands = np.sin((u * c + v * s) * 55.0) * np.sin((u * s - v * c) * 9.0 + 1.0)
    return (1.0 + 0.12 * strands)[..., None] * np.asarray(color, dtype=np.float32)


def _draw_back_hair(canvas: _Canvas, traits: IdentityTraits) -> None:
    """Draw the hair that hangs behind the face and neck (medium, long and volume styles)."""
    if traits.hair_style not in ("medium", "long", "volume"):
        return
    u, v = canvas.u, canvas.v
    cv = traits.face_center_v
    width = traits.face_half_width + traits.hair_volume + 0.06
    if traits.hair_style == "volume":
        width += 0.2
        d = _ellipse(u, v, 0.0, cv - 0.15, width, traits.face_half_height + 0.25)
    else:
        end = cv + (0.45 if traits.hair_style == "medium" else 1.3)
        top = _ellipse(u, v, 0.0, cv - 0.05, width, traits.face_half_height + traits.hair_volume)
        sides = np.maximum(np.abs(u) - width, np.maximum(cv - 0.05 - v, v - end))
        d = np.minimum(top, sides)
        d = np.maximum(d, v - end)
    _paint(canvas.image, _fill(d, canvas.aa), _hair_texture(u, v, traits, traits.hair_color))


def _face_distance(u: np.ndarray, v: np.ndarray, traits: IdentityTraits) -> np.ndarray:
    """Signed distance to the face outline: an ellipse whose lower half tapers to the chin."""
    dv = v - traits.face_center_v
    below = np.clip(dv / traits.face_half_height, 0.0, 1.0)
    half_width = traits.face_half_width * (1.0 - traits.jaw_taper * below * below)
    x = u / half_width
    y = dv / traits.face_half_height
    q = x * x + y * y
    grad = 2.0 * np.sqrt((x / half_width) ** 2 + (y / traits.face_half_height) ** 2) + 1e-6
    return (q - 1.0) / grad


def _draw_head(
    canvas: _Canvas,
    traits: IdentityTraits,
    pose: _Pose,
    light: tuple[float, float],
    clothing: np.ndarray,
) -> np.ndarray:
    """Draw clothing, neck, ears and the shaded face; return the face coverage for later masks."""
    u, v = canvas.u, canvas.v
    skin = np.asarray(traits.skin, dtype=np.float32)
    chin = traits.face_center_v + traits.face_half_height
    shoulders = _ellipse(u, v, 0.0, chin + 0.55, 1.15, 0.45)
    _paint(canvas.image, _fill(shoulders, canvas.aa), clothing)
    neck_width = traits.face_half_width * 0.55
    neck = np.maximum(np.abs(u) - neck_width, traits.face_center_v - v)
    _paint(canvas.image, _fill(neck, canvas.aa), skin * 0.78)
    # Ears sit between eye and nose height; yaw turns one ear away and shows the other more.
    ear_v = 0.5 * (traits.eye_v + traits.nose_v)
    for side in (-1.0, 1.0):
        ear_u = side * (traits.face_half_width - 0.02) - pose.yaw * 0.6
        size = traits.ear_size * (1.0 + side * pose.yaw * 2.0)
        sl, eu, ev = canvas.region(ear_u, ear_v, size * 1.8)
        ear = _ellipse(eu, ev, ear_u, ear_v, size * 0.55, size)
        _paint(canvas.image[sl], _fill(ear, canvas.aa), skin * 0.85)
    face_shift = -pose.yaw * 0.3  # the outline moves less than the features under yaw
    face = _fill(_face_distance(u - face_shift, v, traits), canvas.aa)
    # Shading: darker towards the outline and on the side away from the light.
    dv = (v - traits.face_center_v) / traits.face_half_height
    du = (u - face_shift) / traits.face_half_width
    shade = 1.0 - 0.22 * np.clip(du * du + dv * dv, 0.0, 1.0) ** 1.5
    shade = shade + 0.12 * (du * light[0] + dv * light[1])
    _paint(canvas.image, face, shade[..., None] * skin)
    return face


def _draw_marks(canvas: _Canvas, traits: IdentityTraits, pose: _Pose, face: np.ndarray) -> None:
    """Draw moles, birthmarks, freckles and the scar, all fixed to the face."""
    feature_shift = pose.yaw * 0.4
    for mark in traits.moles:
        mu = mark.u + feature_shift
        sl, u, v = canvas.region(mu, mark.v, mark.radius * 3.0)
        # A Gaussian blob whose width never falls under a pixel keeps tiny moles visible as
        # a faint darkening at low resolution instead of vanishing between pixel centres.
        radius = max(mark.radius, 0.6 * canvas.aa)
        strength = mark.opacity * min(1.0, (mark.radius / radius) ** 2)
        blob = np.exp(-((u - mu) ** 2 + (v - mark.v) ** 2) / (radius * radius))
        _paint(canvas.image[sl], blob * strength * face[sl], mark.color)
    if traits.freckles > 0:
        cu, cv = feature_shift, traits.nose_v - 0.05
        sl, u, v = canvas.region(cu, cv, 0.45)
        p = traits.freckle_phases
        pattern = (
            np.sin(u * 47.0 + v * 13.0 + p[0])
            * np.sin(u * -17.0 + v * 43.0 + p[1])
            * np.sin(u * 31.0 - v * 29.0 + p[2])
        )
        # Spots finer than a pixel blend into their average darkening at low resolution.
        softness = 0.08 + 40.0 * canvas.aa
        spots = np.clip((pattern - 0.25) / softness, 0.0, 1.0)
        region = _fill(_ellipse(u, v, cu, cv, 0.45, 0.2), 0.1)
        alpha = spots * region * face[sl] * (0.55 * traits.freckles)
        _paint(canvas.image[sl], alpha, np.asarray(traits.skin) * np.array([0.7, 0.5, 0.4]))
    if traits.scar is not None:
        u0, v0, u1, v1 = traits.scar
        cu, cv = 0.5 * (u0 + u1) + feature_shift, 0.5 * (v0 + v1)
        sl, u, v = canvas.region(cu, cv, 0.5 * math.hypot(u1 - u0, v1 - v0) + 0.05)
        d = _segment(u, v, u0 + feature_shift, v0, u1 + feature_shift, v1)
        scar_color = np.asarray(traits.skin) * 0.6 + np.array([0.35, 0.2, 0.2])
        _paint(canvas.image[sl], _band(d, 0.012, canvas.aa) * 0.8 * face[sl], scar_color)


def _draw_eyes(
    canvas: _Canvas, traits: IdentityTraits, pose: _Pose, expression: _Expression
) -> None:
    feature_u = pose.yaw * 0.5
    eye_v = traits.eye_v + pose.pitch * 0.5
    skin = np.asarray(traits.skin)
    openness = traits.eye_openness * expression.eye_open
    for side in (-1.0, 1.0):
        cu = side * traits.eye_half_spacing + feature_u
        rw = traits.eye_half_width
        rh = max(rw * openness, 1e-3)
        sl, u, v = canvas.region(cu, eye_v, rw * 2.2)
        image = canvas.image[sl]
        # Eye socket shadow, which keeps the eye region visible at low resolution.
        socket = _fill(_ellipse(u, v, cu, eye_v - rh * 0.3, rw * 1.5, rw * 0.9), rw * 0.6)
        _paint(image, socket * 0.35, skin * 0.6)
        tilt = side * traits.eye_tilt
        eye = _ellipse(u, v, cu, eye_v, rw, rh, tilt)
        white = _fill(eye, canvas.aa)
        _paint(image, white, (0.93, 0.91, 0.87))
        iu = cu + expression.gaze[0] * rw
        iv = eye_v + expression.gaze[1] * rh
        iris = _fill(_ellipse(u, v, iu, iv, rw * 0.48, rw * 0.48), canvas.aa) * white
        _paint(image, iris, traits.iris)
        pupil = _fill(_ellipse(u, v, iu, iv, rw * 0.2, rw * 0.2), canvas.aa) * white
        _paint(image, pupil, (0.03, 0.03, 0.03))
        # Upper lid and lashes: the top half of the outline, drawn as a dark line.
        lid = _band(eye, 0.012 + 0.004 * (1.0 - expression.eye_open), canvas.aa)
        _paint(image, lid * (v < eye_v + rh * 0.2), skin * 0.25)
        brow_v = eye_v - traits.brow_gap - expression.brow_raise
        brow_u = cu + side * 0.02
        sl, u, v = canvas.region(brow_u, brow_v, traits.brow_length + 0.1)
        x = side * (u - brow_u) / traits.brow_length  # -1 at the inner end, +1 at the outer
        curve = brow_v - traits.brow_arch * (1.0 - x * x) + traits.brow_slope * x * 0.08
        half = 0.5 * traits.brow_thickness * (1.0 - 0.35 * np.clip(x, 0.0, 1.0))
        ends = np.clip((1.0 - np.abs(x)) * traits.brow_length / canvas.aa + 0.5, 0.0, 1.0)
        _paint(canvas.image[sl], _band(v - curve, half, canvas.aa) * ends, traits.brow_color)  # type: ignore[arg-type]


def _draw_nose(
    canvas: _Canvas, traits: IdentityTraits, pose: _Pose, light: tuple[float, float]
) -> None:
    tip_u = pose.yaw * 1.0
    tip_v = traits.nose_v + pose.pitch
    skin = np.asarray(traits.skin)
    width = traits.nose_half_width
    top_v = traits.eye_v + 0.05
    cv = 0.5 * (top_v + tip_v)
    sl, u, v = canvas.region(tip_u, cv, 0.5 * (tip_v - top_v) + width + 0.1)
    image = canvas.image[sl]
    # Side of the nose away from the light: a soft shadow along the bridge.
    side = -1.0 if light[0] > 0 else 1.0
    bridge = _segment(
        u, v, side * width * 0.45 + tip_u * 0.5, top_v, side * width * 0.8 + tip_u, tip_v
    )
    _paint(image, _fill(bridge - width * 0.25, width * 0.5) * 0.3, skin * 0.55)
    under = _fill(_ellipse(u, v, tip_u, tip_v + 0.02, width * 0.9, width * 0.35), width * 0.3)
    _paint(image, under * 0.35, skin * 0.5)
    tip = _fill(_ellipse(u, v, tip_u, tip_v - 0.02, width * 0.55, width * 0.45), width * 0.4)
    _paint(image, tip * 0.35, np.minimum(skin * 1.15, 1.0))
    for nostril_side in (-1.0, 1.0):
        nu = tip_u + nostril_side * width * 0.55
        nostril = _ellipse(u, v, nu, tip_v + 0.015, width * 0.3, width * 0.16, nostril_side * 0.3)
        _paint(image, _fill(nostril, canvas.aa) * 0.85, skin * 0.3)


def _draw_facial_hair(
    canvas: _Canvas, traits: IdentityTraits, pose: _Pose, face: np.ndarray
) -> None:
    if traits.facial_hair == "none":
        return
    u, v = canvas.u, canvas.v
    mouth_u = pose.yaw * 0.6
    mouth_v = traits.mouth_v + pose.pitch * 0.8
    if traits.facial_hair == "moustache":
        d = _ellipse(u, v, mouth_u, mouth_v - 0.06, traits.mouth_half_width * 1.1, 0.04)
    elif traits.facial_hair == "goatee":
        d = _ellipse(u, v, mouth_u, mouth_v + 0.08, traits.mouth_half_width * 0.9, 0.17)
    else:  # stubble and beard cover the lower face below the cheekbones
        # The upper edge runs from the sideburns (near eye height) down to the mouth corners.
        centre_v = traits.nose_v + 0.04
        side_v = traits.eye_v + 0.12
        cheek_line = (
            centre_v - (centre_v - side_v) * np.clip(u / traits.face_half_width, -1, 1) ** 2
        )
        d = (cheek_line - v) * 0.5
    alpha = _fill(d, max(canvas.aa, 0.02)) * face
    density = traits.facial_hair_density * (0.35 if traits.facial_hair == "stubble" else 1.0)
    _paint(canvas.image, alpha * density, _hair_texture(u, v, traits, traits.hair_color))


def _draw_mouth(
    canvas: _Canvas, traits: IdentityTraits, pose: _Pose, expression: _Expression
) -> None:
    cu = pose.yaw * 0.6
    cv = traits.mouth_v + pose.pitch * 0.8
    half_width = traits.mouth_half_width * (1.0 + 0.15 * expression.smile)
    sl, u, v = canvas.region(cu, cv, half_width + 0.12)
    image = canvas.image[sl]
    x = (u - cu) / half_width
    profile = np.sqrt(np.clip(1.0 - x * x, 0.0, 1.0))
    curve = traits.mouth_curve + 0.07 * expression.smile
    line = cv - curve * (x * x)  # positive curvature lifts the corners
    opening = expression.mouth_open * profile
    top = line - opening * 0.5 - traits.upper_lip * profile * (1.0 - 0.25 * np.exp(-40 * x * x))
    bottom = line + opening * 0.5 + traits.lower_lip * profile
    ends = (np.abs(x) - 1.0) * half_width
    lips = _fill(np.maximum(np.maximum(top - v, v - bottom), ends), canvas.aa)
    _paint(image, lips, traits.lip_color)
    if expression.mouth_open > 0:
        inside = np.maximum(
            np.maximum(line - opening * 0.5 - v, v - line - opening * 0.5), ends + 0.02
        )
        inner = _fill(inside, canvas.aa)
        _paint(image, inner, (0.25, 0.07, 0.07))
        teeth = inner * _fill(v - (line - opening * 0.5 + opening * 0.35), canvas.aa)
        _paint(image, teeth, (0.92, 0.9, 0.84))
    else:
        _paint(
            image,
            _band(v - line, 0.006, canvas.aa) * (np.abs(x) < 1.0),
            np.asarray(traits.lip_color) * 0.45,
        )


def _draw_hair_front(canvas: _Canvas, traits: IdentityTraits, pose: _Pose) -> None:
    """Draw the hair on the scalp down to the hairline, with fringe and parting."""
    if traits.hair_style == "bald":
        # A horseshoe of short hair at the sides remains.
        u, v = canvas.u, canvas.v
        band = np.maximum(
            np.abs(np.abs(u) - traits.face_half_width * 0.92) - 0.06,
            np.abs(v - (traits.eye_v - 0.08)) - 0.12,
        )
        _paint(canvas.image, _fill(band, 0.04) * 0.5, traits.hair_color)
        return

    u, v = canvas.u, canvas.v
    cv = traits.face_center_v
    volume = traits.hair_volume * (0.3 if traits.hair_style == "buzz" else 1.0)
    if traits.hair_style == "volume":
        volume += 0.12
    scalp = _ellipse(
        u, v, -pose.yaw * 0.2, cv, traits.face_half_width + volume, traits.face_half_height + volume
    )

    top = cv - traits.face_half_height
    hairline_v = top + traits.hairline_depth * traits.face_half_height
    offset = u - traits.parting * traits.face_half_width
    hairline = hairline_v + 0.25 * (u / traits.face_half_width) ** 2 + 0.04 * np.abs(offset)
    if traits.fringe > 0:
        fringe_depth = traits.fringe * 0.3 * np.clip(1.0 - (offset / 0.5) ** 2, 0.0, 1.0)
        hairline = hairline + fringe_depth
    # Hair reaches down the sides to the ears.
    hairline = np.maximum(
        hairline, np.where(np.abs(u) > traits.face_half_width * 0.85, traits.eye_v, -10.0)
    )

    d = np.maximum(scalp, v - hairline)
    alpha = _fill(d, canvas.aa)
    color = _hair_texture(u, v, traits, traits.hair_color)
    if traits.hair_style == "buzz":
        alpha = alpha * 0.7
    # Parting: a thin line of scalp.
    part = _band(offset, 0.008, canvas.aa) * (v < hairline_v) * (traits.hair_style != "buzz")
    alpha = alpha * (1.0 - 0.6 * part)
    _paint(canvas.image, alpha, color)


def _draw_glasses(
    canvas: _Canvas, traits: IdentityTraits, pose: _Pose, tint: float, color: Any, solid: bool
) -> None:
    """Draw glasses; `solid` fills the lenses (sunglasses) instead of outlining them."""
    feature_u = pose.yaw * 0.5
    eye_v = traits.eye_v + pose.pitch * 0.5
    ru = traits.eye_half_width * traits.glasses_size
    rv = ru * (0.85 if traits.glasses_round else 0.62)
    thickness = 0.012 + 0.01 * (traits.glasses_size - 1.3)
    for side in (-1.0, 1.0):
        cu = side * traits.eye_half_spacing + feature_u
        sl, u, v = canvas.region(cu, eye_v, ru + 0.05)
        if traits.glasses_round:
            d = _ellipse(u, v, cu, eye_v, ru, rv)
        else:
            d = _superellipse(u, v, cu, eye_v, ru, rv)
        if solid:
            _paint(canvas.image[sl], _fill(d, canvas.aa) * 0.95, color)
        else:
            _paint(canvas.image[sl], _fill(d, canvas.aa) * tint, (0.7, 0.8, 0.9))
        _paint(canvas.image[sl], _band(d, thickness, canvas.aa), color)
        # Temple arm from the outer edge of the lens to the side of the head.
        outer = cu + side * ru
        sl, u, v = canvas.region(outer, eye_v, traits.face_half_width * 0.6)
        arm = _segment(
            u, v, outer, eye_v - rv * 0.3, side * traits.face_half_width, eye_v - rv * 0.2
        )
        _paint(canvas.image[sl], _band(arm, thickness * 0.8, canvas.aa), color)
    inner = traits.eye_half_spacing - ru
    sl, u, v = canvas.region(feature_u, eye_v, inner + 0.05)
    bridge = _segment(
        u, v, feature_u - inner, eye_v - rv * 0.3, feature_u + inner, eye_v - rv * 0.3
    )
    _paint(canvas.image[sl], _band(bridge, thickness * 0.8, canvas.aa), color)


def _draw_occluder(
    canvas: _Canvas, traits: IdentityTraits, pose: _Pose, rng: np.random.Generator
) -> None:
    """Draw one occluder: sunglasses, a face mask, a hat, a hand or an object."""
    kind = rng.choice(("sunglasses", "mask", "hat", "hand", "object"))
    u, v = canvas.u, canvas.v
    color = _random_color(rng)
    if kind == "sunglasses":
        dark = np.array([0.05, 0.05, 0.06]) + rng.uniform(0.0, 0.15) * color
        glasses = dataclasses.replace(
            traits,
            glasses_round=bool(rng.random() < 0.5),
            glasses_size=float(rng.uniform(1.5, 1.9)),
        )
        _draw_glasses(canvas, glasses, pose, 0.0, dark, solid=True)
    elif kind == "mask":
        mask_color = np.array([0.55, 0.75, 0.9]) if rng.random() < 0.5 else color
        top = traits.nose_v - 0.12
        bottom = traits.face_center_v + traits.face_half_height * 0.93
        d = np.maximum(
            np.maximum(top - v, v - bottom), np.abs(u - pose.yaw * 0.5) - traits.face_half_width
        )
        _paint(canvas.image, _fill(d, canvas.aa), mask_color)
    elif kind == "hat":
        top = traits.face_center_v - traits.face_half_height
        brim_v = top + rng.uniform(0.1, 0.35)
        crown = np.maximum(v - brim_v, np.abs(u) - traits.face_half_width - 0.15)
        brim = np.maximum(np.abs(v - brim_v) - 0.04, np.abs(u) - traits.face_half_width - 0.25)
        _paint(canvas.image, _fill(np.minimum(crown, brim), canvas.aa), color)
    elif kind == "hand":
        hand_skin = np.asarray(traits.skin) * rng.uniform(0.85, 1.05)
        cu = rng.uniform(-0.6, 0.6)
        cv = traits.mouth_v + rng.uniform(0.0, 0.5)
        angle = rng.uniform(-0.8, 0.8)
        palm = _ellipse(u, v, cu, cv, rng.uniform(0.2, 0.35), rng.uniform(0.15, 0.25), angle)
        fingers = np.sin((u * math.cos(angle) + v * math.sin(angle)) * 40.0)
        alpha = _fill(palm, canvas.aa)
        _paint(canvas.image, alpha, hand_skin)
        _paint(canvas.image, alpha * np.clip(fingers - 0.7, 0.0, 1.0), hand_skin * 0.6)
    else:
        cx, cy = rng.uniform(-0.8, 0.8, 2)
        half = rng.uniform(0.1, 0.3, 2)
        angle = rng.uniform(-0.6, 0.6)
        c, s = math.cos(angle), math.sin(angle)
        x = canvas.x - cx
        y = canvas.y - cy
        d = np.maximum(np.abs(c * x + s * y) - half[0], np.abs(c * y - s * x) - half[1])
        _paint(canvas.image, _fill(d, 2.0 / canvas.size), color)


# ----------------------------------------------------------------------------------------------
# Camera effects


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Blur an (H, W, 3) image with a separable Gaussian of `sigma` pixels, edges replicated."""
    radius = max(1, math.ceil(2.5 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    height, width = image.shape[:2]
    padded = np.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    rows = np.zeros_like(image)
    for k, weight in enumerate(taps):
        rows += weight * padded[k : k + height]
    padded = np.pad(rows, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    out = np.zeros_like(image)
    for k, weight in enumerate(taps):
        out += weight * padded[:, k : k + width]
    return out


def _apply_camera(
    canvas: _Canvas, rng: np.random.Generator, nuisance: Nuisance, light: tuple[float, float]
) -> np.ndarray:
    """Apply lighting, blur and sensor noise, and quantise to uint8."""
    image = canvas.image
    low, high = nuisance.gain_range
    gain = math.exp(rng.uniform(math.log(low), math.log(high))) if high > low else low
    strength = rng.uniform(0.0, nuisance.max_gradient)
    ramp = 1.0 + strength * (canvas.x * light[0] + canvas.y * light[1])
    cast = 1.0 + rng.uniform(-1.0, 1.0, 3) * nuisance.max_color_cast
    image *= ramp[..., None]
    image *= (gain * cast).astype(np.float32)
    np.clip(image, 0.0, 1.0, out=image)
    low, high = nuisance.gamma_range
    if high > low:
        image **= np.float32(rng.uniform(low, high))
    if nuisance.max_blur > 0 and rng.random() < nuisance.blur_probability:
        sigma = rng.uniform(0.2, 1.0) * nuisance.max_blur * canvas.size / 2.0
        if sigma >= 0.3:
            image = _gaussian_blur(image, sigma)
    image *= 255.0
    noise_sigma = rng.uniform(0.0, nuisance.max_noise)
    if noise_sigma > 0:
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise_sigma)
    return np.clip(image + 0.5, 0.0, 255.0).astype(np.uint8)


def draw_face(
    traits: IdentityTraits,
    rng: np.random.Generator,
    size: int = 112,
    nuisance: Nuisance = DEFAULT_NUISANCE,
) -> np.ndarray:
    """Draw one image of an identity with the nuisance drawn from `rng`.

    Args:
        traits: The identity, from `sample_identity` or `identity_traits`.
        rng: The image's own generator (see `image_rng`); the same generator state draws the
            same image.
        size: Side of the square image in pixels. The scene does not depend on it, so a 32x32
            image shows what a 112x112 one does at lower resolution.
        nuisance: Strengths of the per-image nuisance.

    Returns:
        An (size, size, 3) uint8 RGB array, roughly aligned like insightface's crops.
    """
    if size < 8:
        raise ConfigError(f"image size must be at least 8 pixels, got {size}")
    pose = _sample_pose(rng, nuisance)
    expression = _sample_expression(rng, nuisance)
    canvas = _Canvas(size, pose.shift, pose.angle, pose.scale)
    if nuisance.random_scene:
        light_angle = rng.uniform(0.0, 2 * math.pi)
        light = (math.cos(light_angle), math.sin(light_angle))
        _draw_background(canvas, rng, nuisance)
        clothing = _random_color(rng)
    else:
        light = (0.0, -1.0)
        canvas.image[...] = 0.5
        clothing = np.array([0.3, 0.3, 0.35])
    _draw_back_hair(canvas, traits)
    face = _draw_head(canvas, traits, pose, light, clothing)
    _draw_marks(canvas, traits, pose, face)
    _draw_facial_hair(canvas, traits, pose, face)
    _draw_nose(canvas, traits, pose, light)
    _draw_mouth(canvas, traits, pose, expression)
    _draw_eyes(canvas, traits, pose, expression)
    _draw_hair_front(canvas, traits, pose)
    if traits.glasses:
        _draw_glasses(canvas, traits, pose, 0.12, traits.glasses_color, solid=False)
    if rng.random() < nuisance.occlusion_probability:
        _draw_occluder(canvas, traits, pose, rng)
    return _apply_camera(canvas, rng, nuisance, light)


# ----------------------------------------------------------------------------------------------
# Data set writing


def fold_count(pairs: int) -> int:
    """Return the number of LFW-style folds for `pairs` pairs: 10 when `pairs` is a multiple of 20.

    Each fold contains as many same as different pairs, so the count falls back to 5, 2 or 1
    fold for pair counts that 20 does not divide.
    """
    for folds in (10, 5, 2):
        if pairs % (2 * folds) == 0:
            return folds
    return 1


def verification_identity_count(pairs: int) -> int:
    """Return how many identities the verification pairs of `pairs` pairs are drawn from."""
    folds = fold_count(pairs)
    return folds * max(2, pairs // folds // 2)


def plan_verification_pairs(
    identities: int, images_per_identity: int, pairs: int, seed: int
) -> list[VerificationPair]:
    """Choose the verification pairs, laid out like LFW's `pairs.txt` and insightface's `lfw.bin`.

    The pairs come from identities `identities`, `identities + 1`, ... which the training set
    (identities 0 to `identities - 1`) never shows. Like LFW's folds, every fold uses its own
    identities and contains a block of same pairs followed by an equal block of different pairs, so
    that a threshold chosen on nine folds is tested on people it has never seen.

    Args:
        identities: Number of training identities; the first verification identity follows them.
        images_per_identity: Images available per verification identity (at least 2 are used).
        pairs: Number of pairs, even; 10 folds need a multiple of 20 (see `fold_count`).
        seed: The data set's seed.

    Raises:
        ConfigError: `pairs` is odd or smaller than 2.
    """
    if pairs < 2 or pairs % 2:
        raise ConfigError(
            f"the number of verification pairs must be even and at least 2, got {pairs}"
        )
    folds = fold_count(pairs)
    half = pairs // folds // 2
    ids_per_fold = verification_identity_count(pairs) // folds
    images = max(2, images_per_identity)
    rng = np.random.default_rng([seed, _PAIR_STREAM])
    planned = []
    for fold in range(folds):
        first = identities + fold * ids_per_fold
        same_ids = rng.permutation(ids_per_fold)
        for k in range(half):
            identity = first + int(same_ids[k % ids_per_fold])
            image_a, image_b = (int(x) for x in rng.choice(images, 2, replace=False))
            planned.append(VerificationPair(identity, image_a, identity, image_b, True))
        for _ in range(half):
            id_a, id_b = (first + int(x) for x in rng.choice(ids_per_fold, 2, replace=False))
            image_a, image_b = (int(x) for x in rng.integers(0, images, 2))
            planned.append(VerificationPair(id_a, image_a, id_b, image_b, False))
    return planned


@dataclass(frozen=True)
class _RenderTask:
    seed: int
    identity: int
    images: tuple[int, ...]
    size: int
    jpeg_quality: int
    nuisance: Nuisance


def _render_task(task: _RenderTask) -> list[bytes]:
    """Draw and JPEG-encode the images of one identity (runs in worker processes too)."""
    traits = identity_traits(task.seed, task.identity)
    return [
        encode_jpeg(
            draw_face(traits, image_rng(task.seed, task.identity, image), task.size, task.nuisance),
            quality=task.jpeg_quality,
        )
        for image in task.images
    ]


def _run_tasks(tasks: Sequence[_RenderTask], workers: int) -> Iterator[list[bytes]]:
    """Yield the results of `tasks` in order, in `workers` processes when more than one."""
    if workers <= 1 or len(tasks) < 2:
        for task in tasks:
            yield _render_task(task)
        return
    import multiprocessing

    # Fork needs no `if __name__ == "__main__"` guard in the caller's script, unlike spawn and
    # forkserver. The workers only run numpy and Pillow, never torch, so the threads that torch
    # may have started in the parent are not needed in the children.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(_render_task, tasks, chunksize=4)


def _prepare_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    folder = Path(out_dir)
    if folder.is_dir():
        return folder
    if folder.exists():
        raise PocketNasError(f"{folder}: output path exists and is not a folder")
    parent = folder.parent if str(folder.parent) else Path(".")
    if not parent.is_dir():
        raise PocketNasError(f"{folder}: neither the output folder nor its parent {parent} exists")
    folder.mkdir()
    return folder


def _check_options(
    identities: int, images_per_identity: int, pairs: int, seed: int, image_size: int, quality: int
) -> None:
    if identities < 2:
        raise ConfigError(f"a training set needs at least 2 identities, got {identities}")
    if images_per_identity < 1:
        raise ConfigError(f"images per identity must be at least 1, got {images_per_identity}")
    if pairs < 2 or pairs % 2:
        raise ConfigError(
            f"the number of verification pairs must be even and at least 2, got {pairs}"
        )
    if seed < 0:
        raise ConfigError(f"the seed must be a non-negative integer, got {seed}")
    if image_size < 8:
        raise ConfigError(f"image size must be at least 8 pixels, got {image_size}")
    if not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be between 1 and 100, got {quality}")


def synthesize(
    out_dir: str | os.PathLike[str],
    identities: int,
    images_per_identity: int,
    pairs: int,
    seed: int,
    image_size: int = 112,
    jpeg_quality: int = 90,
    show_progress: bool = True,
    nuisance: Nuisance = DEFAULT_NUISANCE,
    workers: int = 1,
) -> SynthSummary:
    """Draw a synthetic training set and verification pairs of unseen identities into `out_dir`.

    Writes `train.rec`, `train.idx` and `property` (insightface's layout, labels 0 to
    `identities - 1` in ascending order), `verification.bin` (laid out like `lfw.bin`, see
    `plan_verification_pairs`) and `synth.json` (parameters, counts and the pair list). The files
    depend only on the arguments, not on `workers`.

    Args:
        out_dir: Output folder; it is created when only its parent exists.
        identities: Number of training identities (classes).
        images_per_identity: Training images drawn per identity.
        pairs: Number of verification pairs, even; 10 folds need a multiple of 20.
        seed: Seed of every random choice.
        image_size: Side of the square images in pixels.
        jpeg_quality: JPEG quality of the stored images.
        show_progress: Show a tqdm progress bar over the images.
        nuisance: Strengths of the per-image nuisance.
        workers: Processes that draw images; 1 draws in this process.

    Returns:
        The paths and counts of what was written.

    Raises:
        PocketNasError: `out_dir` is not a folder and its parent does not exist.
        ConfigError: a count, the seed, the size or the quality is out of range.
    """
    _check_options(identities, images_per_identity, pairs, seed, image_size, jpeg_quality)
    folder = _prepare_out_dir(out_dir)
    start = time.perf_counter()
    planned = plan_verification_pairs(identities, images_per_identity, pairs, seed)
    # Images shared by several pairs are drawn once.
    references = sorted(
        {(p.identity_a, p.image_a) for p in planned} | {(p.identity_b, p.image_b) for p in planned}
    )
    by_identity: dict[int, list[int]] = {}
    for identity, image in references:
        by_identity.setdefault(identity, []).append(image)
    verification_ids = tuple(range(identities, identities + verification_identity_count(pairs)))

    train_tasks = [
        _RenderTask(
            seed, label, tuple(range(images_per_identity)), image_size, jpeg_quality, nuisance
        )
        for label in range(identities)
    ]
    pair_tasks = [
        _RenderTask(
            seed,
            identity,
            tuple(_VERIFICATION_IMAGE_OFFSET + image for image in images),
            image_size,
            jpeg_quality,
            nuisance,
        )
        for identity, images in sorted(by_identity.items())
    ]
    total = identities * images_per_identity + len(references)
    logger.info(
        "drawing %d training images of %d identities and %d verification images at %dx%d",
        identities * images_per_identity,
        identities,
        len(references),
        image_size,
        image_size,
    )
    with tqdm(total=total, desc="synthesize", unit="img", disable=not show_progress) as bar:

        def train_samples() -> Iterator[tuple[int, bytes]]:
            for label, encoded in enumerate(_run_tasks(train_tasks, workers)):
                for jpeg in encoded:
                    yield label, jpeg
                bar.update(len(encoded))

        num_train = write_face_record_set(
            folder, train_samples(), num_classes=identities, image_size=(image_size, image_size)
        )
        encoded_refs: dict[tuple[int, int], bytes] = {}
        for task, encoded in zip(pair_tasks, _run_tasks(pair_tasks, workers), strict=True):
            for image, jpeg in zip(task.images, encoded, strict=True):
                encoded_refs[(task.identity, image - _VERIFICATION_IMAGE_OFFSET)] = jpeg
            bar.update(len(encoded))
    pair_images: list[bytes] = []
    for pair in planned:
        pair_images.append(encoded_refs[(pair.identity_a, pair.image_a)])
        pair_images.append(encoded_refs[(pair.identity_b, pair.image_b)])
    verification_path = folder / "verification.bin"
    write_verification_bin(verification_path, pair_images, [p.is_same for p in planned])
    seconds = time.perf_counter() - start

    manifest = {
        "format": "pocketnas-synth",
        "version": SYNTH_FORMAT_VERSION,
        "seed": seed,
        "image_size": image_size,
        "jpeg_quality": jpeg_quality,
        "identities": identities,
        "images_per_identity": images_per_identity,
        "num_train_images": num_train,
        "train_identity_ids": [0, identities - 1],
        "pairs": pairs,
        "num_folds": fold_count(pairs),
        "verification_identity_ids": [verification_ids[0], verification_ids[-1]],
        "num_verification_images": len(references),
        "nuisance": dataclasses.asdict(nuisance),
        "files": {
            "train_rec": "train.rec",
            "train_idx": "train.idx",
            "property": "property",
            "verification": "verification.bin",
        },
        "verification_pairs": [
            [p.identity_a, p.image_a, p.identity_b, p.image_b, p.is_same] for p in planned
        ],
    }
    manifest_path = folder / "synth.json"
    atomic_write_json(manifest_path, manifest)
    logger.info("wrote %s in %.1f s", folder, seconds)
    return SynthSummary(
        out_dir=folder,
        train_rec=folder / "train.rec",
        train_idx=folder / "train.idx",
        property_path=folder / "property",
        verification_bin=verification_path,
        manifest_path=manifest_path,
        num_classes=identities,
        num_train_images=num_train,
        num_pairs=len(planned),
        num_folds=fold_count(pairs),
        verification_identity_ids=verification_ids,
        seconds=seconds,
    )


def load_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read `synth.json` from a folder written by `synthesize`.

    Raises:
        DataError: the file is missing or is not JSON.
    """
    path = Path(out_dir) / "synth.json"
    try:
        with open(path, encoding="utf-8") as handle:
            data: dict[str, Any] = json.load(handle)
    except FileNotFoundError as exc:
        raise DataError(path, "not found; was the folder written by synthesize?") from exc
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    return data
