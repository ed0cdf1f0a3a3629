"""Phantom chest radiographs rendered from a report's findings, with ground-truth regions.

The offline demo dataset pairs real report text with synthetic PA and lateral images drawn from
the report's labels, so that every stage (and Grad-CAM scoring against `*_regions`) can run
without real radiographs. One seed fixes everything: the anatomy, the exposure and the noise come
from streams that do not depend on the findings, so the same seed with and without a finding
gives the same chest and differs only where the finding's sign is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stages.labeling.observations import NO_FINDING, OBSERVATIONS
from stages.phantom.anatomy import Chest, frontal_chest, lateral_chest, sample_anatomy
from stages.phantom.canvas import gaussian_blur
from stages.phantom.findings import (SIDE_NAMES, ZONES, Placement, paint, place,
                                     reshape_anatomy)

_DENSE = 1.9  # attenuation that develops to white; denser tissue and metal saturate
_STREAMS = ("anatomy", "placement", "frontal", "lateral", "frontal noise", "lateral noise")


@dataclass(frozen=True)
class Finding:
    """One positive (or uncertain) observation of a report, as the renderer should draw it."""

    observation: int            # index into OBSERVATIONS (0..12; 13 No Finding is never rendered)
    side: str | None = None     # "left", "right", "bilateral" or None (the renderer picks)
    zone: str | None = None     # "upper", "middle", "lower" or None (the renderer picks)
    severity: float = 1.0       # 0.5 mild .. 1.5 severe; scales size and contrast
    uncertain: bool = False     # an uncertain mention is rendered fainter

    def __post_init__(self) -> None:
        if not 0 <= self.observation < len(OBSERVATIONS):
            raise ValueError(f"observation {self.observation} is not an index into OBSERVATIONS")
        if self.side is not None and self.side not in SIDE_NAMES:
            raise ValueError(f"side {self.side!r} is not one of {sorted(SIDE_NAMES)} or None")
        if self.zone is not None and self.zone not in ZONES:
            raise ValueError(f"zone {self.zone!r} is not one of {ZONES} or None")


@dataclass
class RenderedStudy:
    """A PA and a lateral phantom image, each with one region mask per observation."""

    frontal: np.ndarray          # (size, size) uint8, PA view
    lateral: np.ndarray          # (size, size) uint8, lateral view
    frontal_regions: np.ndarray  # (14, size, size) bool; all False for absent observations
    lateral_regions: np.ndarray  # (14, size, size) bool


@dataclass(frozen=True)
class Exposure:
    """Film-like response of one study: how attenuation maps to grey levels, noise and blur."""

    gain: float    # attenuation scale before the exponential response
    black: float   # response mapped to 0
    white: float   # response mapped to 255
    gamma: float
    noise: float   # quantum-noise standard deviation at mid grey, for 256-px pixels
    blur: float    # detector blur sigma, normalised

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Exposure:
        return cls(gain=rng.uniform(1.0, 1.4), black=rng.uniform(0.0, 0.06),
                   white=rng.uniform(0.95, 1.05), gamma=rng.uniform(1.0, 1.3),
                   noise=rng.uniform(0.012, 0.03), blur=rng.uniform(0.0015, 0.0035))

    def develop(self, attenuation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Grey levels: saturating exponential response, window, gamma, quantum noise, blur."""
        transmitted = np.exp(np.float32(-self.gain) * np.maximum(attenuation, 0.0))
        response = (1.0 - transmitted) / np.float32(1.0 - math.exp(-self.gain * _DENSE))
        grey = np.clip((response - self.black) / (self.white - self.black), 0.0, 1.0)
        grey = grey ** np.float32(self.gamma)
        noise = rng.standard_normal(grey.shape, dtype=np.float32)
        sigma = self.noise * math.sqrt(grey.shape[0] / 256)  # larger pixels collect more photons
        grey = grey + np.float32(sigma) * np.sqrt(grey + 0.1) * noise
        grey = gaussian_blur(grey, self.blur * grey.shape[0])
        return np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)


def render_study(findings: Sequence[Finding], size: int = 256,
                 rng: np.random.Generator | None = None) -> RenderedStudy:
    """Render both views of one study; No Finding (or no findings) gives a normal chest."""
    if size < 16:
        raise ValueError(f"size {size} is too small to draw a chest")
    rng = np.random.default_rng() if rng is None else rng
    streams = dict(zip(_STREAMS, (np.random.default_rng(seed) for seed in
                                  rng.integers(0, 2**63 - 1, size=len(_STREAMS)))))
    anatomy = sample_anatomy(streams["anatomy"])
    exposure = Exposure.sample(streams["anatomy"])
    placements = [place(finding.observation, finding.side, finding.zone, finding.severity,
                        finding.uncertain, streams["placement"])
                  for finding in findings if finding.observation != NO_FINDING]
    anatomy = reshape_anatomy(anatomy, placements)
    views = []
    for view, build in (("frontal", frontal_chest), ("lateral", lateral_chest)):
        chest = build(size, anatomy, streams[view])
        attenuation, regions = _draw_findings(chest, placements)
        views.append((exposure.develop(attenuation, streams[f"{view} noise"]), regions))
    (frontal, frontal_regions), (lateral, lateral_regions) = views
    return RenderedStudy(frontal, lateral, frontal_regions, lateral_regions)


def _draw_findings(chest: Chest, placements: list[Placement]) -> tuple[np.ndarray, np.ndarray]:
    """Total attenuation of one view and the (14, size, size) regions of its findings."""
    attenuation = chest.attenuation()
    regions = np.zeros((len(OBSERVATIONS), chest.canvas.size, chest.canvas.size), dtype=bool)
    for placement in placements:
        sign = paint(chest, placement)
        attenuation += sign.density
        regions[placement.observation] |= sign.region
    return attenuation, regions

