"""The signs of the 13 renderable observations, each drawn with its ground-truth region.

`place` turns a finding into a `Placement` once per study (sides, zones, size, contrast, device
types), so the PA and the lateral view show the same disease. The structural findings change the
anatomy (`reshape_anatomy`); every other one is painted by `paint` as an attenuation layer added
to the normal chest. A sign's region is the binary mask of where it was drawn, so Grad-CAM maps
can be scored against it; it is never empty for a rendered finding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from stages.labeling.observations import OBSERVATIONS
from stages.phantom.anatomy import LEFT, RIGHT, Anatomy, Chest, RibBreak, Spot, rib_at
from stages.phantom.canvas import (Point, bezier, dilate, ellipse, ramp, region, smooth_noise,
                                   strokes, superellipse_depth)

ENLARGED_CARDIOMEDIASTINUM = OBSERVATIONS.index("Enlarged Cardiomediastinum")
CARDIOMEGALY = OBSERVATIONS.index("Cardiomegaly")
LUNG_OPACITY = OBSERVATIONS.index("Lung Opacity")
LUNG_LESION = OBSERVATIONS.index("Lung Lesion")
EDEMA = OBSERVATIONS.index("Edema")
CONSOLIDATION = OBSERVATIONS.index("Consolidation")
PNEUMONIA = OBSERVATIONS.index("Pneumonia")
ATELECTASIS = OBSERVATIONS.index("Atelectasis")
PNEUMOTHORAX = OBSERVATIONS.index("Pneumothorax")
PLEURAL_EFFUSION = OBSERVATIONS.index("Pleural Effusion")
PLEURAL_OTHER = OBSERVATIONS.index("Pleural Other")
FRACTURE = OBSERVATIONS.index("Fracture")
SUPPORT_DEVICES = OBSERVATIONS.index("Support Devices")

SIDE_NAMES = {"right": (RIGHT,), "left": (LEFT,), "bilateral": (RIGHT, LEFT)}
ZONES = ("upper", "middle", "lower")
DEVICES = ("pacemaker", "et_tube", "central_line", "ng_tube", "sternotomy", "ecg_leads")

_ZONE_HEIGHTS = {"upper": (0.12, 0.3), "middle": (0.4, 0.58), "lower": (0.68, 0.86)}
# Where each observation tends to be when the report does not say (upper, middle, lower).
_ZONE_PRIOR = {
    LUNG_OPACITY: (0.2, 0.35, 0.45), LUNG_LESION: (0.35, 0.35, 0.3),
    EDEMA: (0.0, 1.0, 0.0), CONSOLIDATION: (0.2, 0.3, 0.5), PNEUMONIA: (0.2, 0.3, 0.5),
    ATELECTASIS: (0.0, 0.3, 0.7), PNEUMOTHORAX: (0.8, 0.15, 0.05),
    PLEURAL_EFFUSION: (0.0, 0.0, 1.0), PLEURAL_OTHER: (0.3, 0.4, 0.3),
    FRACTURE: (0.3, 0.45, 0.25), SUPPORT_DEVICES: (1.0, 0.0, 0.0),
}
# How often an unlateralised mention is bilateral.
_BILATERAL_PRIOR = {EDEMA: 0.85, PLEURAL_EFFUSION: 0.35, LUNG_OPACITY: 0.2, PNEUMONIA: 0.15,
                    ATELECTASIS: 0.25, PLEURAL_OTHER: 0.2}
_DEVICE_PRIOR = (0.25, 0.2, 0.2, 0.1, 0.15, 0.1)


@dataclass(frozen=True)
class Placement:
    """One finding as drawn in both views: where, how large, how dense, with what details."""

    observation: int
    spots: tuple[Spot, ...]
    strength: float  # contrast multiplier: severity, and fainter when uncertain
    scale: float     # size multiplier: severity
    seed: int        # the shape details, shared by the two views
    devices: tuple[str, ...] = ()


@dataclass
class Sign:
    """What a finding adds to one view: attenuation (negative = lucency) and its region."""

    density: np.ndarray
    region: np.ndarray


def place(observation: int, side: str | None, zone: str | None, severity: float,
          uncertain: bool, rng: np.random.Generator) -> Placement:
    """Decide sides, zones and details of a finding; unknown side or zone follow the priors."""
    severity = min(max(severity, 0.5), 1.5)
    strength = severity * (0.6 if uncertain else 1.0)
    prior = _ZONE_PRIOR.get(observation, (1 / 3, 1 / 3, 1 / 3))
    if side is not None:
        sides = SIDE_NAMES[side]
    elif observation == SUPPORT_DEVICES:  # the side of a pacemaker or a line: mostly left
        sides = (LEFT if rng.random() < 0.8 else RIGHT,)
    elif rng.random() < _BILATERAL_PRIOR.get(observation, 0.05):
        sides = (RIGHT, LEFT)
    else:
        sides = (RIGHT if rng.random() < 0.5 else LEFT,)
    spots = []
    for spot_side in sides:
        low, high = _ZONE_HEIGHTS[zone or ZONES[rng.choice(3, p=prior)]]
        posterior_shift = rng.uniform(0.0, 0.3) * (low + high) / 2  # lower lobes lie posteriorly
        spots.append(Spot(spot_side, rng.uniform(low, high), rng.uniform(0.25, 0.75),
                          min(rng.uniform(0.2, 0.75) + posterior_shift, 0.95)))
    devices: tuple[str, ...] = ()
    if observation == SUPPORT_DEVICES:
        count = 1 if rng.random() < 0.6 else 2
        devices = tuple(str(kind) for kind in
                        rng.choice(DEVICES, size=count, replace=False, p=_DEVICE_PRIOR))
    return Placement(observation, tuple(spots), strength, severity,
                     int(rng.integers(2**31)), devices)


def reshape_anatomy(anatomy: Anatomy, placements: list[Placement]) -> Anatomy:
    """Apply the structural findings: a larger heart, a wider mediastinum, broken ribs."""
    changes: dict[str, object] = {}
    breaks: list[RibBreak] = []
    for placement in placements:
        if placement.observation == CARDIOMEGALY:
            changes["ctr"] = max(anatomy.ctr + 0.08, 0.5 + 0.12 * placement.strength)
        elif placement.observation == ENLARGED_CARDIOMEDIASTINUM:
            changes["widening"] = 0.012 + 0.03 * placement.strength
        elif placement.observation == FRACTURE:
            breaks += _rib_breaks(anatomy, placement)
    return replace(anatomy, rib_breaks=anatomy.rib_breaks + tuple(breaks), **changes)


def _rib_breaks(anatomy: Anatomy, placement: Placement) -> list[RibBreak]:
    """The posterior rib crossing each spot's height, broken on its lateral arc; a severe
    fracture also breaks the rib below."""
    direction = 1 if placement.seed % 2 else -1
    step = direction * (0.3 + 0.25 * min(placement.strength, 1.2))
    breaks = []
    for spot in placement.spots:
        along = 0.55 + 0.3 * spot.breadth
        height = anatomy.apex + spot.height * (anatomy.dome(spot.side) - anatomy.apex)
        rib = min(max(rib_at(anatomy, height, along), 1), 9)
        breaks.append(RibBreak(spot.side, rib, along, step))
        if placement.scale > 1.2:
            breaks.append(RibBreak(spot.side, rib + 1, along + 0.03, step))
    return breaks


def paint(chest: Chest, placement: Placement) -> Sign:
    """Draw one placed finding on one view."""
    rng = np.random.default_rng([placement.seed, 0 if chest.view == "frontal" else 1])
    return _PAINTERS[placement.observation](chest, placement, rng)


def _blank(chest: Chest) -> Sign:
    """Nothing drawn yet: signs accumulate their sites into this."""
    size = chest.canvas.size
    return Sign(chest.canvas.zeros(), np.zeros((size, size), dtype=bool))


def _blob_texture(chest: Chest, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Patchy multiplicative texture (around 1) that makes opacities look fluffy."""
    return np.clip(1.0 + 0.35 * smooth_noise(chest.canvas, rng, cells), 0.3, 1.6)


def _enlarged_cardiomediastinum(chest: Chest, placement: Placement,
                                rng: np.random.Generator) -> Sign:
    """Drawn by the anatomy (a wider upper mediastinum); the region is its silhouette below the
    thoracic inlet."""
    upper = chest.mediastinum
    if chest.view == "frontal":
        upper = upper * ramp(chest.canvas.v - chest.anatomy.apex + 0.03, 0.01)
    return Sign(chest.canvas.zeros(), region(upper))


def _cardiomegaly(chest: Chest, placement: Placement, rng: np.random.Generator) -> Sign:
    """Drawn by the anatomy (a larger cardiothoracic ratio); the region is the heart above the
    diaphragm."""
    above = ramp(chest.anatomy.dome_left + 0.02 - chest.canvas.v, 0.01)
    return Sign(chest.canvas.zeros(), region(chest.heart * above))


def _lung_opacity(chest: Chest, placement: Placement, rng: np.random.Generator) -> Sign:
    """Ill-defined ground-glass haze."""
    sign = _blank(chest)
    texture = _blob_texture(chest, rng, 8)
    for spot in placement.spots:
        radii = (0.075 * placement.scale * rng.uniform(0.85, 1.2),
                 0.065 * placement.scale * rng.uniform(0.85, 1.2))
        shape = ellipse(chest.canvas, chest.spot(spot), radii, rng.uniform(-0.6, 0.6), edge=0.05)
        sign.density += 0.2 * placement.strength * shape * texture * chest.lungs[spot.side]
        sign.region |= region(shape * chest.lungs[spot.side])
    return sign


def _consolidation(chest: Chest, placement: Placement, rng: np.random.Generator) -> Sign:
    """Dense confluent airspace opacity with air bronchograms."""
    canvas = chest.canvas
    sign = _blank(chest)
    texture = np.clip(1.0 + 0.1 * smooth_noise(canvas, rng, 12), 0.7, 1.3)
    for spot in placement.spots:
        u, v = chest.spot(spot)
        blob = canvas.zeros()
        for _ in range(3):
            centre = (u + rng.uniform(-0.03, 0.03), v + rng.uniform(-0.025, 0.025))
            radii = (placement.scale * rng.uniform(0.045, 0.07),
                     placement.scale * rng.uniform(0.04, 0.06))
            blob = np.maximum(blob, ellipse(canvas, centre, radii, rng.uniform(-1, 1), edge=0.015))
        blob *= chest.lungs[spot.side]
        bronchi = _bronchogram_paths(rng, (u, v), 0.05 * placement.scale)
        lucency = strokes(canvas, bronchi, 0.006, blur=0.002)
        sign.density += placement.strength * blob * (0.4 * texture - 0.22 * lucency)
        sign.region |= region(blob)
    return sign


def _bronchogram_paths(rng: np.random.Generator, centre: Point, reach: float) -> list[list[Point]]:
    """A few short branching air-filled bronchi radiating through a consolidation."""
    paths = []
    for _ in range(3):
        angle = rng.uniform(0, 2 * np.pi)
        middle = (centre[0] + reach * math.cos(angle), centre[1] + reach * math.sin(angle))
        paths.append([centre, middle])
        for turn in (-0.5, 0.5):
            end = (middle[0] + 0.6 * reach * math.cos(angle + turn),
                   middle[1] + 0.6 * reach * math.sin(angle + turn))
            paths.append([middle, end])
    return paths


def _pneumonia(chest: Chest, placement: Placement, rng: np.random.Generator) -> Sign:
    """Patchy, mottled airspace opacities clustered in a zone."""
    canvas = chest.canvas
    sign = _blank(chest)
    texture = _blob_texture(chest, rng, 18)
    for spot in placement.spots:
        u, v = chest.spot(spot)
        patches = canvas.zeros()
        for _ in range(int(rng.integers(5, 9))):
            centre = (u + rng.normal(0.0, 0.04 * placement.scale),
                      v + rng.normal(0.0, 0.035 * placement.scale))
            radius = placement.scale * rng.uniform(0.02, 0.036)
            patches = np.maximum(patches, ellipse(canvas, centre, (radius, radius * 0.85),
                                                  edge=0.02))
        patches *= chest.lungs[spot.side]
        sign.density += 0.26 * placement.strength * patches * texture
        sign.region |= region(patches, 0.5, grow=1)
    return sign


def _lung_lesion(chest: Chest, placement: Placement, rng: np.random.Generator) -> Sign:
    """Round, well-defined nodules or, when severe, a mass."""
    canvas = chest.canvas
    sign = _blank(chest)
    minimum = 2.3 * canvas.pixel
    for spot in placement.spots:
        u, v = chest.spot(spot)
        centres = [(u, v)]
        if rng.random() < 0.25:
            centres.append((u + rng.uniform(-0.06, 0.06), v + rng.uniform(0.04, 0.08)))
        for centre in centres:
            radius = max(placement.scale**1.5 * rng.uniform(0.02, 0.032), minimum)
            disc = ellipse(canvas, centre, (radius, radius * rng.uniform(0.85, 1.0)),
                           rng.uniform(0, np.pi), edge=0.003)
            sign.density += 0.42 * placement.strength * disc
            sign.region |= region(disc, 0.5, grow=1)
    return sign


def _edema(chest: Chest, placement: Placement, rng: np.random.Generator) -> Sign:
    """Perihilar bat-wing haze with indistinct vessels, and Kerley B lines at the periphery."""
    canvas = chest.canvas
    sign = _blank(chest)
    texture = _blob_texture(chest, rng, 10)
    lines = []
    for spot in placement.spots:
        side = spot.side
        inward = -1.0 if chest.view == "lateral" else -float(side)
        hilum_u, hilum_v = chest.hilum(side)
        centre = (hilum_u - inward * (0.0 if chest.view == "lateral" else 0.06), hilum_v)
        radii = (0.11 * placement.scale**0.5, 0.13 * placement.scale**0.5)
        haze = ellipse(canvas, centre, radii, edge=0.08) * chest.lungs[side]
        sign.density += placement.strength * haze * (0.2 * texture + 0.4 * chest.vessels)
        sign.region |= region(haze)
        for _ in range(int(rng.integers(5, 9))):
            edge_u, edge_v = chest.spot(Spot(side, rng.uniform(0.6, 0.95), 1.0, 0.97))
            start = edge_u + inward * 0.004
            lines.append([(start, edge_v), (start + inward * rng.uniform(0.025, 0.04), edge_v)])
    kerley = strokes(canvas, lines, 0.004, blur=0.0015)
    sign.density += 0.2 * placement.strength * kerley
    sign.region |= region(kerley, 0.3, grow=1)
    return sign


def _atelectasis(chest: Chest, placement: Placement, rng: np.random.Generator) -> Sign:
    """Plate-like linear bands, mostly horizontal, in the lung bases."""
    canvas = chest.canvas
    sign = _blank(chest)
    for spot in placement.spots:
        u, v = chest.spot(spot)
        for index in range(1 if rng.random() < 0.6 else 2):
            centre = (u + rng.uniform(-0.02, 0.02), v + index * rng.uniform(0.03, 0.05))
            radii = (placement.scale * rng.uniform(0.06, 0.09),
                     max(0.009 * placement.scale, 1.3 * canvas.pixel))
            plate = ellipse(canvas, centre, radii, rng.uniform(-0.3, 0.3), edge=0.004)
            plate *= chest.lungs[spot.side]
            sign.density += 0.4 * placement.strength * plate
            sign.region |= region(plate, 0.5, grow=1)
    return sign


def _pneumothorax(chest: Chest, placement: Placement, rng: np.random.Generator) -> Sign:
    """A lucent rim without lung markings, bounded by the thin visceral pleural line."""
    canvas = chest.canvas
    anatomy = chest.anatomy
    sign = _blank(chest)
    for spot in placement.spots:
        side = spot.side
        height = (canvas.v - anatomy.apex) / (anatomy.dome(side) - anatomy.apex)
        weight = np.clip(1.0 - ((height - spot.height) / 0.55) ** 2, 0.0, 1.0)
        rim_depth = max(0.03 + 0.025 * placement.scale, 3.0 * canvas.pixel) * weight
        inside = chest.lungs[side] * chest.free_wall[side]
        depth = chest.depth[side]
        rim = inside * ramp(rim_depth - depth, canvas.pixel)
        line_width = max(0.003, 0.6 * canvas.pixel)
        line = inside * np.exp(-(((depth - rim_depth) / line_width) ** 2)) * ramp(weight - 0.3, 0.2)
        sign.density += (0.18 * placement.strength * line
                    - rim * (chest.vessels + 0.12 * placement.strength))
        sign.region |= region(np.maximum(rim, line))
    return sign


def _pleural_effusion(chest: Chest, placement: Placement, rng: np.random.Generator) -> Sign:
    """Fluid replacing the aerated base: a meniscus rising towards the dependent chest wall."""
    canvas = chest.canvas
    sign = _blank(chest)
    opacity = min(1.0, 0.45 + 0.45 * placement.strength)
    for spot in placement.spots:
        side = spot.side
        lung_height = chest.anatomy.dome(side) - chest.anatomy.apex
        level = lung_height * (0.12 + 0.16 * placement.scale) * rng.uniform(0.85, 1.15)
        surface = chest.base(side) - level * (0.55 + 0.6 * chest.wall[side] ** 2)
        fill = ramp(canvas.v - surface, 0.02)
        sign.density += opacity * fill * chest.aeration[side]
        sign.region |= region(fill * chest.lungs[side])
    return sign


def _pleural_other(chest: Chest, placement: Placement, rng: np.random.Generator) -> Sign:
    """Lenticular pleural plaques along the chest wall, sometimes calcified."""
    canvas = chest.canvas
    sign = _blank(chest)
    calcified = rng.random() < 0.35
    for spot in placement.spots:
        side = spot.side
        _, centre_v = chest.spot(spot)
        half_length = 0.05 + 0.04 * placement.scale
        thickness = max(0.01 + 0.008 * placement.scale, 2.0 * canvas.pixel)
        profile = np.sqrt(np.clip(1.0 - ((canvas.v - centre_v) / half_length) ** 2, 0.0, 1.0))
        depth = chest.depth[side]
        plaque = ramp(thickness * profile - depth, canvas.pixel) * ramp(depth + 0.004, canvas.pixel)
        plaque *= ramp(profile - 0.1, 0.1) * ramp(chest.wall[side] - 0.65, 0.1)
        plaque *= chest.free_wall[side] * ramp(chest.base(side) - 0.03 - canvas.v, 0.02)
        sign.density += (0.5 if calcified else 0.3) * placement.strength * plaque
        sign.region |= region(plaque, 0.5, grow=1)
    return sign


def _fracture(chest: Chest, placement: Placement, rng: np.random.Generator) -> Sign:
    """A rib with a gap and a step (drawn by the anatomy) and a lump of callus at the break;
    the region surrounds each break."""
    canvas = chest.canvas
    sign = _blank(chest)
    radius = max(0.032, 3.0 * canvas.pixel)
    callus = (max(0.02 * placement.scale**0.5, 2.0 * canvas.pixel), max(0.012, 1.2 * canvas.pixel))
    for rib_break in _rib_breaks(chest.anatomy, placement):
        centre = chest.rib_point(rib_break)
        lump = ellipse(canvas, centre, callus, rng.uniform(-0.5, 0.5), edge=0.006)
        sign.density += 0.2 * placement.strength * lump
        sign.region |= region(ellipse(canvas, centre, (radius, radius)))
    return sign


def _support_devices(chest: Chest, placement: Placement, rng: np.random.Generator) -> Sign:
    """Thin bright tubes, lines and wires, and the dense box of a pacemaker."""
    canvas = chest.canvas
    sign = _blank(chest)
    side = placement.spots[0].side
    draw = _FRONTAL_DEVICES if chest.view == "frontal" else _LATERAL_DEVICES
    for kind in placement.devices:
        drawn = draw[kind](chest, side, rng)
        sign.density += placement.strength * drawn
        sign.region |= dilate(region(drawn, 0.3), max(2, round(canvas.size / 128)))
    return sign


def _lead(chest: Chest, control: list[Point], width: float = 0.005) -> np.ndarray:
    """A smooth wire or tube through Bezier control points."""
    return strokes(chest.canvas, [bezier(control, 40)], width, blur=0.001)


def _box(chest: Chest, centre: Point, radii: Point) -> np.ndarray:
    """A rounded rectangle: the can of a pacemaker, with a denser core."""
    depth = superellipse_depth(chest.canvas, centre, radii, 4.0)
    outer = ramp(depth, chest.canvas.pixel)
    inner = ramp(depth - 0.35 * min(radii), chest.canvas.pixel)
    return outer * (1.0 + 0.3 * inner)


def _rings(chest: Chest, centres: list[Point], radii: Point) -> np.ndarray:
    """Small metal loops: sternal wires or ECG electrodes."""
    rings = chest.canvas.zeros()
    inner = (radii[0] * 0.55, radii[1] * 0.45)
    for centre in centres:
        outer_disc = ellipse(chest.canvas, centre, radii)
        rings = np.maximum(rings, outer_disc * (1.0 - 0.8 * ellipse(chest.canvas, centre, inner)))
    return rings


def _frontal_pacemaker(chest: Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    anatomy = chest.anatomy
    m, box_u = anatomy.midline, anatomy.midline + side * 0.55 * anatomy.half_width
    box_v = anatomy.apex + rng.uniform(0.04, 0.08)
    svc = (m - 0.03, anatomy.carina + 0.03)
    ventricle = _lead(chest, [(box_u - side * 0.03, box_v), (m + side * 0.08, anatomy.apex),
                              svc, (m - 0.06, anatomy.dome_right - 0.1),
                              (m + 0.1, anatomy.dome_right - 0.03)])
    atrium = _lead(chest, [(box_u - side * 0.03, box_v + 0.01), (m + side * 0.07, anatomy.apex),
                           svc, (m - 0.05, anatomy.carina + 0.16),
                           (m - 0.01, anatomy.carina + 0.1)])
    return 1.6 * _box(chest, (box_u, box_v), (0.042, 0.03)) + 1.0 * np.maximum(ventricle, atrium)


def _frontal_et_tube(chest: Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    anatomy = chest.anatomy
    tip = anatomy.carina - rng.uniform(0.03, 0.07)
    path = [(anatomy.midline + 0.002, 0.0), (anatomy.midline + 0.005, anatomy.apex + 0.05),
            (anatomy.midline + 0.007, tip)]
    tube = strokes(chest.canvas, [path], 0.014, blur=0.001)
    stripe = strokes(chest.canvas, [[(u - 0.004, v) for u, v in path]], 0.003)
    return 0.4 * tube + 0.9 * stripe


def _frontal_central_line(chest: Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    anatomy, m = chest.anatomy, chest.anatomy.midline
    tip = anatomy.carina + rng.uniform(0.04, 0.1)
    return 0.9 * _lead(chest, [(m + side * 0.14, 0.0), (m + side * 0.07, anatomy.apex + 0.03),
                               (m - 0.02, anatomy.apex + 0.08), (m - 0.03, tip)])


def _frontal_ng_tube(chest: Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    anatomy, m = chest.anatomy, chest.anatomy.midline
    dome = anatomy.dome_left
    path = [(m + 0.01, 0.0), (m + 0.015, anatomy.carina), (m + 0.04, dome - 0.02),
            (m + 0.12, dome + 0.06), (m + rng.uniform(0.16, 0.22), dome + 0.1)]
    return 0.9 * _lead(chest, path, 0.006)


def _frontal_sternotomy(chest: Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    anatomy = chest.anatomy
    start = anatomy.apex + 0.1
    step = (anatomy.dome_right - 0.06 - start) / 5
    centres = [(anatomy.midline + rng.normal(0.0, 0.004), start + index * step)
               for index in range(6)]
    return 1.3 * _rings(chest, centres, (0.013, 0.008))


def _frontal_ecg_leads(chest: Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    anatomy, m = chest.anatomy, chest.anatomy.midline
    width = anatomy.half_width
    electrodes = [(m - 0.8 * width, anatomy.apex + rng.uniform(0.0, 0.08)),
                  (m + 0.8 * width, anatomy.apex + rng.uniform(0.0, 0.08)),
                  (m + rng.uniform(0.4, 0.7) * width, anatomy.dome_left - rng.uniform(0.0, 0.1))]
    wires = [bezier([point, (point[0] + rng.uniform(-0.1, 0.1), point[1] + 0.15),
                     (0.0 if point[0] < m else 1.0, point[1] + rng.uniform(0.1, 0.3))])
             for point in electrodes]
    drawn = 0.6 * strokes(chest.canvas, wires, 0.003, blur=0.001)
    return np.maximum(drawn, 1.1 * _rings(chest, electrodes, (0.014, 0.014)))


def _lateral_pacemaker(chest: Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    anatomy = chest.anatomy
    front = anatomy.sternum
    box = (front - 0.015, anatomy.apex + rng.uniform(0.05, 0.09))
    lead = _lead(chest, [(box[0] + 0.02, box[1]), (front + 0.2, anatomy.apex + 0.03),
                         (front + 0.26, anatomy.carina + 0.05),
                         (front + 0.2, anatomy.dome_right - 0.15),
                         (front + 0.06, anatomy.dome_right - 0.03)])
    return 1.6 * _box(chest, box, (0.02, 0.032)) + lead


def _lateral_et_tube(chest: Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    anatomy = chest.anatomy
    front = anatomy.sternum
    path = [(front + 0.24, 0.0), (front + 0.27, anatomy.apex + 0.06),
            (front + 0.29, anatomy.carina - rng.uniform(0.03, 0.07))]
    return 0.4 * strokes(chest.canvas, [path], 0.014, blur=0.001) + 0.9 * strokes(
        chest.canvas, [[(u + 0.004, v) for u, v in path]], 0.003)


def _lateral_central_line(chest: Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    anatomy = chest.anatomy
    front = anatomy.sternum
    return 0.9 * _lead(chest, [(front + 0.3, 0.0), (front + 0.22, anatomy.apex + 0.05),
                               (front + 0.24, anatomy.carina),
                               (front + 0.22, anatomy.carina + rng.uniform(0.05, 0.1))])


def _lateral_ng_tube(chest: Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    anatomy = chest.anatomy
    front, dome = anatomy.sternum, anatomy.dome_left
    return 0.9 * _lead(chest, [(front + 0.32, 0.0), (front + 0.37, anatomy.carina),
                               (anatomy.spine - 0.04, dome - 0.05), (front + 0.32, dome + 0.07),
                               (front + rng.uniform(0.16, 0.22), dome + 0.09)], 0.006)


def _lateral_sternotomy(chest: Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    """Sternal wires seen edge-on: short bright bars crossing the sternum."""
    anatomy = chest.anatomy
    start, end = anatomy.apex + 0.06, anatomy.dome_right - 0.06
    bars = []
    for index in range(6):
        v = start + index * (end - start) / 5
        u = anatomy.sternum + 0.005 - 0.017 * (v - start) / (end - start)
        bars.append([(u - 0.02, v + rng.normal(0.0, 0.003)), (u + 0.02, v + 0.006)])
    return 1.3 * strokes(chest.canvas, bars, 0.006)


def _lateral_ecg_leads(chest: Chest, side: int, rng: np.random.Generator) -> np.ndarray:
    anatomy = chest.anatomy
    electrodes = [(anatomy.sternum - 0.05, anatomy.apex + rng.uniform(0.1, 0.3)),
                  (anatomy.sternum - 0.04, anatomy.dome_right - rng.uniform(0.0, 0.1))]
    wires = [bezier([point, (point[0] + 0.1, point[1] + 0.1),
                     (rng.uniform(0.3, 0.7), 1.0)]) for point in electrodes]
    drawn = 0.6 * strokes(chest.canvas, wires, 0.003, blur=0.001)
    return np.maximum(drawn, 1.1 * _rings(chest, electrodes, (0.012, 0.014)))


DeviceDrawer = Callable[[Chest, int, np.random.Generator], np.ndarray]
_FRONTAL_DEVICES: dict[str, DeviceDrawer] = {
    "pacemaker": _frontal_pacemaker, "et_tube": _frontal_et_tube,
    "central_line": _frontal_central_line, "ng_tube": _frontal_ng_tube,
    "sternotomy": _frontal_sternotomy, "ecg_leads": _frontal_ecg_leads,
}
_LATERAL_DEVICES: dict[str, DeviceDrawer] = {
    "pacemaker": _lateral_pacemaker, "et_tube": _lateral_et_tube,
    "central_line": _lateral_central_line, "ng_tube": _lateral_ng_tube,
    "sternotomy": _lateral_sternotomy, "ecg_leads": _lateral_ecg_leads,
}

Painter = Callable[[Chest, Placement, np.random.Generator], Sign]
_PAINTERS: dict[int, Painter] = {
    ENLARGED_CARDIOMEDIASTINUM: _enlarged_cardiomediastinum,
    CARDIOMEGALY: _cardiomegaly,
    LUNG_OPACITY: _lung_opacity,
    LUNG_LESION: _lung_lesion,
    EDEMA: _edema,
    CONSOLIDATION: _consolidation,
    PNEUMONIA: _pneumonia,
    ATELECTASIS: _atelectasis,
    PNEUMOTHORAX: _pneumothorax,
    PLEURAL_EFFUSION: _pleural_effusion,
    PLEURAL_OTHER: _pleural_other,
    FRACTURE: _fracture,
    SUPPORT_DEVICES: _support_devices,
}
