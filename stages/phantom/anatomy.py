"""The normal chest: per-study anatomy and the attenuation layers of a PA and a lateral view.

A study's `Anatomy` is a handful of numbers drawn from the rng (chest width, diaphragm height,
heart size, rotation...). The structural findings are anatomy too: cardiomegaly is a larger
cardiothoracic ratio, an enlarged cardiomediastinum a wider upper mediastinum, a fracture a
`RibBreak`. `frontal_chest` and `lateral_chest` turn it into attenuation layers (bright = dense,
lung air subtracted) plus the geometry that findings.py places its signs on.

Sides are the patient's: on the PA view the patient's right lung is on the viewer's left, so
`RIGHT` = -1 is the sign of (u - midline) there. On the lateral view the patient faces the
viewer's left: anterior is small u, the spine is on the right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stages.phantom.canvas import (Canvas, Point, ellipse, ellipsoid, ramp, smooth_noise,
                                   strokes, superellipse_depth)

RIGHT, LEFT = -1, 1
SIDES = (RIGHT, LEFT)

AIR = {"frontal": 0.52, "lateral": 0.5}  # attenuation removed by fully aerated lung
_LUNG_POWER = 2.2
_SILHOUETTE_HEIGHTS = np.linspace(0.0, 1.0, 401)
_RIB_GROWTH = 0.035  # each rib space is this fraction of the top one wider than the last
_LATERAL_RIB_UNIT = 0.32  # lateral view: normalised length from the rib heads to along = 1
_VESSEL_WIDTHS = (0.01, 0.007, 0.005, 0.0035, 0.0025)
_VESSEL_VALUES = (1.0, 0.8, 0.6, 0.45, 0.35)


@dataclass(frozen=True)
class RibBreak:
    """A fractured posterior rib: the lateral fragment is offset and a gap separates them."""

    side: int
    rib: int        # 0 = first posterior rib
    along: float    # 0 at the spine .. 1 at the chest wall
    step: float     # offset of the lateral fragment, in rib spacings


@dataclass(frozen=True)
class Anatomy:
    """The numbers that make one patient's chest differ from another's (all normalised)."""

    midline: float
    half_width: float   # half the inner thoracic width on the PA view
    apex: float         # v of the lung apices
    dome_right: float   # v of the top of the right hemidiaphragm (higher, i.e. smaller v)
    dome_left: float
    ctr: float          # cardiothoracic ratio
    mediastinum: float  # half width of the upper mediastinum
    widening: float     # extra half width of the upper mediastinum (enlarged cardiomediastinum)
    rib_spacing: float
    first_rib: float
    sternum: float      # lateral view: u of the sternum
    spine: float        # lateral view: u of the front of the vertebral bodies
    gastric_bubble: bool
    tilt_frontal: float
    tilt_lateral: float
    rib_breaks: tuple[RibBreak, ...] = ()

    def dome(self, side: int) -> float:
        return self.dome_right if side == RIGHT else self.dome_left

    def costophrenic(self, side: int) -> float:
        """v of the lateral costophrenic angle, the lowest point of the PA lung field."""
        return self.dome(side) + 0.085

    @property
    def carina(self) -> float:
        return self.apex + 0.19

    def hilum_height(self, side: int) -> float:
        """The left hilum sits a little higher than the right."""
        return self.apex + 0.42 * (self.dome(side) - self.apex) - (0.015 if side == LEFT else 0.0)


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """A random normal adult chest (heart within normal size, rotation of a few degrees)."""
    apex = rng.uniform(0.1, 0.14)
    dome_right = rng.uniform(0.65, 0.72)
    return Anatomy(
        midline=0.5 + rng.normal(0.0, 0.008),
        half_width=rng.uniform(0.36, 0.41),
        apex=apex,
        dome_right=dome_right,
        dome_left=dome_right + rng.uniform(0.012, 0.035),
        ctr=rng.uniform(0.4, 0.49),
        mediastinum=rng.uniform(0.062, 0.075),
        widening=0.0,
        rib_spacing=rng.uniform(0.045, 0.05),
        first_rib=apex - rng.uniform(0.0, 0.02),
        sternum=rng.uniform(0.15, 0.2),
        spine=rng.uniform(0.68, 0.73),
        gastric_bubble=bool(rng.random() < 0.6),
        tilt_frontal=math.radians(rng.uniform(-3.0, 3.0)),
        tilt_lateral=math.radians(rng.uniform(-3.0, 3.0)),
    )


@dataclass(frozen=True)
class Spot:
    """Where a focal sign sits, independently of the view (fractions of the lung field)."""

    side: int
    height: float   # 0 at the apex .. 1 at the diaphragm
    breadth: float  # 0 medial .. 1 at the chest wall (PA view)
    depth: float    # 0 anterior .. 1 posterior (lateral view)


@dataclass
class Chest:
    """One view of a normal chest: attenuation layers and the geometry findings are drawn on.

    The per-side dictionaries describe each lung: the air it contributes to `air` (what an
    effusion replaces), its soft field, the distance inside its outer outline (`depth`), how
    close a point is to the dependent chest wall (`wall`, 0..1: lateral on the PA view,
    posterior on the lateral) and where its pleura lines the chest wall (`free_wall`, not the
    mediastinum or the diaphragm). `heart` and `mediastinum` are soft silhouettes.
    """

    view: str
    canvas: Canvas
    anatomy: Anatomy
    tissue: np.ndarray
    bone: np.ndarray
    organs: np.ndarray
    vessels: np.ndarray
    air: np.ndarray
    aeration: dict[int, np.ndarray]
    lungs: dict[int, np.ndarray]
    depth: dict[int, np.ndarray]
    wall: dict[int, np.ndarray]
    free_wall: dict[int, np.ndarray]
    heart: np.ndarray
    mediastinum: np.ndarray

    def attenuation(self) -> np.ndarray:
        return self.tissue + self.bone + self.organs + self.vessels - self.air

    def spot(self, spot: Spot) -> Point:
        """The image position (u, v) of a view-independent spot."""
        anatomy = self.anatomy
        v = anatomy.apex + spot.height * (anatomy.dome(spot.side) - anatomy.apex)
        if self.view == "lateral":
            front, back = anatomy.sternum + 0.045, _spine_front(anatomy, v) + 0.02
            return front + spot.depth * (back - front), v
        medial, lateral = lung_span(anatomy, spot.side, v)
        return anatomy.midline + spot.side * (medial + spot.breadth * (lateral - medial)), v

    def hilum(self, side: int) -> Point:
        if self.view == "lateral":
            return _lateral_hilum(self.anatomy, side)
        return _hilum_point(self.anatomy, side)

    def base(self, side: int) -> float:
        """v of the lung's lowest point: costophrenic angle (PA), posterior sulcus (lateral)."""
        if self.view == "lateral":
            return self.anatomy.dome(side) + 0.11
        return self.anatomy.costophrenic(side)

    def rib_point(self, rib_break: RibBreak) -> Point:
        """The image position of a rib break, on the centre line of the broken rib."""
        anatomy = self.anatomy
        if self.view == "lateral":
            u = _lateral_rib_u(anatomy, rib_break.along)
            offset = 0.5 if rib_break.side == LEFT else 0.0
            v = (anatomy.first_rib + _rib_offset(rib_break.rib + offset, anatomy.rib_spacing)
                 + _lateral_rib_curve(anatomy, u))
            return u, v
        along = rib_break.along
        v = (anatomy.first_rib + _rib_offset(rib_break.rib, anatomy.rib_spacing)
             + _posterior_rib_curve(anatomy, along))
        return anatomy.midline + rib_break.side * along * anatomy.half_width, v


def rib_at(anatomy: Anatomy, v: float, along: float) -> int:
    """Index of the PA posterior rib whose centre crosses height v at position `along`."""
    offset = v - _posterior_rib_curve(anatomy, along) - anatomy.first_rib
    return round(float(_rib_phase(offset, anatomy.rib_spacing)))


def lung_span(anatomy: Anatomy, side: int, v: float) -> tuple[float, float]:
    """Medial and lateral distance from the midline of the PA lung field at height v."""
    centre, radii = _lung_outline(anatomy, side)
    rise = min(max((centre[1] - v) / radii[1], 0.0), 1.0)
    lateral = anatomy.half_width * 0.5 + radii[0] * (1.0 - rise**_LUNG_POWER) ** (1 / _LUNG_POWER)
    medial = float(np.interp(v, _SILHOUETTE_HEIGHTS, silhouette(anatomy)[side])) + 0.025
    return min(medial, lateral - 0.06), lateral


def heart_top(anatomy: Anatomy) -> float:
    """v where the heart borders leave the mediastinum (the cardiac waist)."""
    return anatomy.apex + 0.23


def silhouette(anatomy: Anatomy) -> dict[int, np.ndarray]:
    """Each side's border of the PA cardiomediastinal silhouette, as a distance from the midline
    sampled at `_SILHOUETTE_HEIGHTS`.

    Above the heart: the mediastinum (SVC on the right, aortic knob on the left), widened by
    `widening`. Below the waist each heart border curves out to its widest point a little above
    the diaphragm, 0.72 x half the heart's width on the right and 1.28 x on the left, so that
    the heart is `ctr` x the thoracic width; the profiles are smoothed to avoid kinks.
    """
    v = _SILHOUETTE_HEIGHTS
    extent = anatomy.ctr * anatomy.half_width
    t = np.clip((v - anatomy.apex + 0.03) / 0.33, 0.0, 1.0)
    bulge_of_widening = np.clip(np.sin(np.pi * t), 0.0, None) ** 0.8
    upper = anatomy.mediastinum * (0.8 + 0.25 * t) + anatomy.widening * bulge_of_widening
    knob = 0.028 * np.exp(-(((v - anatomy.apex - 0.16) / 0.035) ** 2))

    def bulge(peak: float, width: float, roundness: float) -> np.ndarray:
        rise = np.clip((v - heart_top(anatomy)) / (peak - heart_top(anatomy)), 0.0, 1.0)
        fall = np.clip((v - peak) / 0.2, 0.0, 1.0)
        return width * np.sin(0.5 * np.pi * rise) ** roundness * np.sqrt(1.0 - fall * fall)

    right = np.maximum(upper, bulge(anatomy.dome_right - 0.07, 0.72 * extent, 0.6))
    left = np.maximum(upper + knob, bulge(anatomy.dome_right - 0.04, 1.28 * extent, 1.0))
    box = np.ones(15) / 15
    return {side: np.convolve(np.pad(border, 7, mode="edge"), box, mode="valid")
            for side, border in ((RIGHT, right), (LEFT, left))}


def _lung_outline(anatomy: Anatomy, side: int) -> tuple[Point, Point]:
    """Superellipse (centre, radii) whose upper half is the outer outline of a PA lung."""
    width = anatomy.half_width
    base = anatomy.costophrenic(side)
    return (anatomy.midline + side * 0.5 * width, base), (0.49 * width, base - anatomy.apex)


def _rib_phase(offset: float | np.ndarray, spacing: float) -> float | np.ndarray:
    """Rib number at a distance below the first rib; lower rib spaces are a little wider."""
    return np.log1p(_RIB_GROWTH * offset / spacing) / _RIB_GROWTH


def _rib_offset(phase: float, spacing: float) -> float:
    """Inverse of `_rib_phase`: how far below the first rib a rib's centre lies."""
    return spacing * math.expm1(_RIB_GROWTH * phase) / _RIB_GROWTH


def _posterior_rib_curve(anatomy: Anatomy, along: float | np.ndarray) -> float | np.ndarray:
    """Drop of a posterior rib below its spinal end: rising slightly, then arching down."""
    return anatomy.half_width * (0.7 * along * along - 0.35 * along)


def _spine_front(anatomy: Anatomy, v: float | np.ndarray) -> float | np.ndarray:
    """Lateral view: u of the front of the vertebral bodies (a gentle thoracic kyphosis)."""
    return anatomy.spine + 0.03 * np.sin(np.pi * v)


def _lateral_rib_u(anatomy: Anatomy, along: float) -> float:
    return anatomy.spine + 0.06 - _LATERAL_RIB_UNIT * along


def _lateral_rib_curve(anatomy: Anatomy, u: float | np.ndarray) -> float | np.ndarray:
    """Lateral view: ribs run down and forwards from the spine."""
    return 0.42 * (anatomy.spine - u)


def _rib_bands(phase: np.ndarray, spacing: float, duty: float, edge: float) -> np.ndarray:
    """Periodic rib bands with brighter cortical margins; a rib centre at each integer phase."""
    cosine = np.cos(np.float32(2 * np.pi) * phase)
    local_spacing = spacing * (1.0 + _RIB_GROWTH * np.maximum(phase, 0.0))

    def band(fraction: float) -> np.ndarray:
        slope = local_spacing * np.float32(1 / (2 * np.pi * math.sin(np.pi * fraction)))
        return ramp((cosine - np.float32(math.cos(np.pi * fraction))) * np.float32(slope), edge)

    outer = band(duty)
    return 0.45 * outer + 0.55 * (outer - band(duty * 0.65))


def _break_ribs(phase: np.ndarray, along: np.ndarray, breaks: list[RibBreak], unit: float,
                pixel: float) -> tuple[np.ndarray, np.ndarray]:
    """Shift the lateral fragment of each broken rib and return (phase, gap multiplier).

    `unit` is the normalised length of one unit of `along`.
    """
    gaps = np.ones_like(phase)
    for rib_break in breaks:
        near = ramp(0.5 - np.abs(phase - rib_break.rib), 0.15)
        fragment = ramp(along - rib_break.along, 0.01) * ramp(rib_break.along + 0.3 - along, 0.1)
        phase = phase - np.float32(rib_break.step) * near * fragment
        gap_width = max(0.006, 1.2 * pixel) / unit
        gaps *= 1.0 - near * np.exp(-(((along - rib_break.along) / gap_width) ** 2))
    return phase, gaps


def _vessel_tree(rng: np.random.Generator, hilum: Point, directions: list[Point],
                 reach: float) -> tuple[list[list[Point]], list[float], list[float]]:
    """Branching pulmonary vessels from a hilum: (paths, widths, values), thinning outwards."""
    paths: list[list[Point]] = []
    widths: list[float] = []
    values: list[float] = []

    def grow(start: Point, angle: float, length: float, generation: int) -> None:
        end = (start[0] + length * math.cos(angle), start[1] + length * math.sin(angle))
        bend = rng.normal(0.0, 0.15) * length
        middle = ((start[0] + end[0]) / 2 - bend * math.sin(angle),
                  (start[1] + end[1]) / 2 + bend * math.cos(angle))
        paths.append([start, middle, end])
        widths.append(_VESSEL_WIDTHS[generation])
        values.append(_VESSEL_VALUES[generation])
        if generation + 1 < len(_VESSEL_WIDTHS):
            for turn in (-1, 1):
                grow(end, angle + turn * rng.uniform(0.2, 0.55),
                     length * rng.uniform(0.6, 0.8), generation + 1)

    for du, dv in directions:
        grow(hilum, math.atan2(dv, du) + rng.normal(0.0, 0.12), reach * rng.uniform(0.8, 1.1), 0)
    return paths, widths, values


def frontal_chest(size: int, anatomy: Anatomy, rng: np.random.Generator) -> Chest:
    """The PA view of a normal chest (the rng draws its vessels and texture)."""
    canvas = Canvas.create(size, anatomy.tilt_frontal)
    x = canvas.u - np.float32(anatomy.midline)
    v = canvas.v
    below_diaphragm = ramp(v - (anatomy.dome_left + 0.03), 0.12)
    tissue = _frontal_body(canvas, anatomy, x) * (
        _frontal_thickness(anatomy, x) + 0.16 * below_diaphragm)

    lungs, depth, wall, free_wall = {}, {}, {}, {}
    for side in SIDES:
        lungs[side], depth[side], wall[side], free_wall[side] = _frontal_lung(canvas, anatomy, side)
    outline = _frontal_silhouette(canvas, anatomy, x)
    heart = outline * ramp(v - heart_top(anatomy), 0.02)
    mediastinum = outline * ramp(heart_top(anatomy) - v, 0.02)
    hila = sum(ellipse(canvas, _hilum_point(anatomy, side), (0.03, 0.045), edge=0.03)
               for side in SIDES)
    inlet = 0.5 + 0.5 * ramp(v - anatomy.apex, 0.12)  # the neck is thinner than the mediastinum
    organs = 0.25 * outline * inlet + 0.1 * hila

    height = np.clip((v - anatomy.apex) / (anatomy.dome_right - anatomy.apex), 0.0, 1.0)
    texture = np.float32(AIR["frontal"]) * (1.0 + 0.05 * smooth_noise(canvas, rng, 10)
                                            + 0.06 * smooth_noise(canvas, rng, 48))
    texture *= (1.0 - 0.8 * outline) * (0.85 + 0.15 * np.sin(np.pi * np.sqrt(height)))
    aeration = {side: lungs[side] * texture * _thinning(depth[side]) for side in SIDES}
    air = aeration[RIGHT] + aeration[LEFT] + 0.4 * _frontal_airway(canvas, anatomy)
    if anatomy.gastric_bubble:
        bubble = (anatomy.midline + 0.5 * anatomy.half_width, anatomy.dome_left + 0.06)
        air += 0.3 * ellipse(canvas, bubble, (0.045, 0.026), edge=0.01) * below_diaphragm

    vessels = _frontal_vessels(canvas, anatomy, rng) * (lungs[RIGHT] + lungs[LEFT])
    bone = _frontal_bones(canvas, anatomy, x, outline)
    return Chest("frontal", canvas, anatomy, tissue, bone, organs, vessels, air, aeration, lungs,
                 depth, wall, free_wall, heart, mediastinum)


def _thinning(depth: np.ndarray) -> np.ndarray:
    """Less air towards a lung's outline, where the curved chest wall leaves less lung to cross."""
    return 0.6 + 0.4 * np.sqrt(np.clip(depth * np.float32(1 / 0.05), 0.0, 1.0))


def _frontal_thickness(anatomy: Anatomy, x: np.ndarray) -> np.ndarray:
    """Soft tissue crossed by the beam: an elliptical trunk, thin at the lateral chest wall."""
    across = np.clip(x * np.float32(1 / (anatomy.half_width + 0.08)), -1.0, 1.0)
    return 0.8 * (0.25 + 0.75 * np.sqrt(1.0 - across * across))


def _frontal_body(canvas: Canvas, anatomy: Anatomy, x: np.ndarray) -> np.ndarray:
    """Soft-tissue outline: neck, sloping shoulders that reach the edges, trunk below."""
    distance = np.abs(x)
    shoulders = ramp(anatomy.apex + 0.14 - canvas.v, 0.12)
    wall = anatomy.half_width + 0.06 + 0.04 * canvas.v + 0.12 * shoulders
    top = 0.03 + 0.4 * distance * distance
    return np.maximum(ramp(wall - distance, 0.025) * ramp(canvas.v - top, 0.04),
                      ramp(0.08 - distance, 0.03))


def _frontal_lung(canvas: Canvas, anatomy: Anatomy,
                  side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(field, depth inside the outline, closeness to the lateral wall, free pleura) of a lung."""
    centre, radii = _lung_outline(anatomy, side)
    depth = superellipse_depth(canvas, centre, radii, _LUNG_POWER, mirror=side)
    width = anatomy.half_width
    lateral = (canvas.u - np.float32(anatomy.midline)) * np.float32(side)
    dome, base = anatomy.dome(side), anatomy.costophrenic(side)
    offset = lateral - np.float32(0.42 * width)
    curvature = np.where(offset > 0, (base - dome) / (0.58 * width) ** 2,  # down to the angle
                         0.03 / (0.42 * width) ** 2).astype(np.float32)  # nearly flat medially
    diaphragm = dome + curvature * offset * offset
    field = ramp(depth, max(0.006, canvas.pixel)) * ramp(diaphragm - canvas.v, 0.008)
    wall = np.clip(lateral / np.float32(width), 0.0, 1.0)
    free_wall = np.maximum(ramp(wall - 0.45, 0.15), ramp(anatomy.apex + 0.1 - canvas.v, 0.05))
    return field, depth, wall, free_wall


def _frontal_silhouette(canvas: Canvas, anatomy: Anatomy, x: np.ndarray) -> np.ndarray:
    """Soft mask of the cardiomediastinal silhouette, down to the diaphragm."""
    borders = silhouette(anatomy)
    right = np.interp(canvas.v, _SILHOUETTE_HEIGHTS, borders[RIGHT]).astype(np.float32)
    left = np.interp(canvas.v, _SILHOUETTE_HEIGHTS, borders[LEFT]).astype(np.float32)
    edge = max(canvas.pixel, 0.01)
    above_diaphragm = ramp(anatomy.dome_left + 0.03 - canvas.v, 0.04)
    return ramp(right + x, edge) * ramp(left - x, edge) * above_diaphragm


def _hilum_point(anatomy: Anatomy, side: int) -> Point:
    height = anatomy.hilum_height(side)
    offset = float(np.interp(height, _SILHOUETTE_HEIGHTS, silhouette(anatomy)[side])) + 0.03
    return anatomy.midline + side * offset, height


def _frontal_airway(canvas: Canvas, anatomy: Anatomy) -> np.ndarray:
    """Trachea down to the carina and the two main bronchi (air, so subtracted)."""
    top = (anatomy.midline + 0.002, 0.0)
    carina = (anatomy.midline + 0.008, anatomy.carina)
    trachea = [top, (anatomy.midline + 0.003, anatomy.apex + 0.06), carina]
    right = [carina, (anatomy.midline - 0.06, anatomy.carina + 0.07)]
    left = [carina, (anatomy.midline + 0.07, anatomy.carina + 0.065)]
    return strokes(canvas, [trachea, right, left], [0.034, 0.02, 0.02], [1.0, 0.7, 0.7],
                   blur=0.004)


def _frontal_vessels(canvas: Canvas, anatomy: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Lung markings: a vessel tree fanning out of each hilum."""
    paths, widths, values = [], [], []
    for side in SIDES:
        directions = [(side * 0.2, -1.0), (side * 0.7, -0.8), (side, -0.35), (side, 0.05),
                      (side, 0.45), (side * 0.7, 0.9), (side * 0.25, 1.0)]
        tree = _vessel_tree(rng, _hilum_point(anatomy, side), directions, 0.055)
        paths += tree[0]
        widths += tree[1]
        values += tree[2]
    return 0.13 * strokes(canvas, paths, widths, values, blur=0.0035)


def _frontal_bones(canvas: Canvas, anatomy: Anatomy, x: np.ndarray,
                   silhouette_mask: np.ndarray) -> np.ndarray:
    """Spine, posterior and anterior ribs, clavicles, scapulae and humeral heads.

    Ribs fade over the mediastinum and the abdomen, where thick soft tissue hides them.
    """
    bone = 0.09 * _frontal_spine(canvas, anatomy, x)
    ribs = canvas.zeros()
    for side in SIDES:
        lateral = x * np.float32(side)
        along = lateral / np.float32(anatomy.half_width)
        ribs += 0.085 * _frontal_posterior_ribs(canvas, anatomy, side, along)
        ribs += 0.05 * _frontal_anterior_ribs(canvas, anatomy, along)
        bone += 0.2 * _clavicle(canvas, anatomy, lateral)
        scapula_centre = (anatomy.midline + side * (anatomy.half_width - 0.01), anatomy.apex + 0.14)
        bone += 0.06 * ellipse(canvas, scapula_centre, (0.06, 0.14), -side * 0.3, edge=0.02)
        humerus_centre = (anatomy.midline + side * (anatomy.half_width + 0.11), anatomy.apex + 0.04)
        bone += 0.2 * ellipsoid(canvas, humerus_centre, (0.055, 0.065), edge=0.006)
    return bone + ribs * (1.0 - 0.6 * silhouette_mask)


def _frontal_spine(canvas: Canvas, anatomy: Anatomy, x: np.ndarray) -> np.ndarray:
    """Vertebral bodies with their end plates, and the paired pedicles of each level."""
    level = np.cos(np.float32(2 * np.pi / 0.048) * (canvas.v - anatomy.apex))
    edge = max(canvas.pixel, 0.004)
    bodies = ramp(0.03 - np.abs(x), edge) * (0.85 + 0.15 * ramp(level + 0.3, 0.6))
    pedicles = ramp(0.006 - np.abs(np.abs(x) - 0.021), edge) * ramp(level - 0.2, 0.5)
    return bodies + 0.6 * pedicles


def _frontal_posterior_ribs(canvas: Canvas, anatomy: Anatomy, side: int,
                            along: np.ndarray) -> np.ndarray:
    """Posterior ribs of one side, with any breaks; faint over the abdomen."""
    spacing = anatomy.rib_spacing
    drop = _posterior_rib_curve(anatomy, along)
    phase = _rib_phase(canvas.v - drop - anatomy.first_rib, spacing)
    breaks = [rib_break for rib_break in anatomy.rib_breaks if rib_break.side == side]
    phase, gaps = _break_ribs(phase, along, breaks, anatomy.half_width, canvas.pixel)
    edge = max(1.5 * canvas.pixel, 0.005)
    extent = ramp(along - 0.07, 0.05) * ramp(1.08 - along, 0.06)
    extent *= ramp(phase + 0.5, 0.3) * ramp(11.5 - phase, 0.6)
    extent *= 0.2 + 0.8 * ramp(anatomy.dome(side) + 0.04 - canvas.v, 0.08)
    return _rib_bands(phase, spacing, 0.42, edge) * gaps * extent


def _frontal_anterior_ribs(canvas: Canvas, anatomy: Anatomy, along: np.ndarray) -> np.ndarray:
    """Anterior ribs: fainter, running down and medially from the chest wall."""
    spacing = anatomy.rib_spacing * 1.2
    drop = anatomy.half_width * 0.35 * np.clip(1.0 - along, 0.0, 1.0) ** 1.3
    phase = (canvas.v - drop - anatomy.first_rib + 0.02) / spacing
    extent = ramp(along - 0.3, 0.15) * ramp(1.05 - along, 0.05)
    extent *= ramp(phase - 0.5, 0.3) * ramp(6.5 - phase, 0.5)
    return _rib_bands(phase, spacing, 0.3, max(1.5 * canvas.pixel, 0.005)) * extent


def _clavicle(canvas: Canvas, anatomy: Anatomy, lateral: np.ndarray) -> np.ndarray:
    """An S-shaped band from the sternal notch up and out to the shoulder."""
    length = 0.34
    t = (lateral - 0.03) / length
    centre = anatomy.apex + 0.04 - 0.07 * t + 0.025 * np.sin(np.pi * t) ** 2
    half_thickness = 0.009 + 0.005 * np.clip(1.0 - t, 0.0, 1.0)
    band = ramp(half_thickness - np.abs(canvas.v - centre), max(canvas.pixel, 0.004))
    return band * ramp(t, 0.1) * ramp(1.0 - t, 0.1)


def lateral_chest(size: int, anatomy: Anatomy, rng: np.random.Generator) -> Chest:
    """The lateral view of a normal chest, patient facing the viewer's left."""
    canvas = Canvas.create(size, anatomy.tilt_lateral)
    u, v = canvas.u, canvas.v
    spine = _spine_front(anatomy, v)
    neck = np.clip((anatomy.apex + 0.04 - v) / 0.14, 0.0, 1.0)
    front_skin = anatomy.sternum - 0.05 + 0.16 * neck * neck
    body = ramp(u - front_skin, 0.012) * ramp(spine + 0.24 - u, 0.02)
    below_diaphragm = ramp(v - (anatomy.dome_left + 0.06), 0.12)
    shoulders = ramp(anatomy.apex + 0.1 - v, 0.16)  # the shoulder girdle overlies the apices
    tissue = body * (0.82 + 0.2 * below_diaphragm + 0.22 * shoulders)

    front, back = anatomy.sternum + 0.025, anatomy.spine + 0.08
    base = max(anatomy.dome_right, anatomy.dome_left) + 0.11
    depth_field = superellipse_depth(canvas, ((front + back) / 2, base),
                                     ((back - front) / 2, base - anatomy.apex), 2.4)
    outline = ramp(depth_field, 0.02)
    wall_field = np.clip((u - front) / (back - front), 0.0, 1.0)
    free_field = ramp(min(anatomy.dome_right, anatomy.dome_left) - 0.05 - v, 0.1)
    lungs = {side: outline * _lateral_diaphragm(canvas, anatomy, side, front, back)
             for side in SIDES}

    heart = _lateral_heart(canvas, anatomy)
    mediastinum = _lateral_upper_mediastinum(canvas, anatomy)
    hila = sum(ellipse(canvas, _lateral_hilum(anatomy, side), (0.035, 0.045), edge=0.03)
               for side in SIDES)
    organs = (0.16 * np.maximum(heart, mediastinum) + 0.08 * hila) * ramp(
        anatomy.dome_right + 0.03 - v, 0.05)

    texture = np.float32(0.5 * AIR["lateral"]) * (1.0 + 0.05 * smooth_noise(canvas, rng, 10))
    texture *= 1.0 - 0.4 * heart
    aeration = {side: lungs[side] * texture for side in SIDES}
    air = aeration[RIGHT] + aeration[LEFT] + 0.15 * _lateral_airway(canvas, anatomy)
    if anatomy.gastric_bubble:
        bubble = (anatomy.sternum + 0.16, anatomy.dome_left + 0.065)
        air += 0.3 * ellipse(canvas, bubble, (0.05, 0.025), edge=0.01) * below_diaphragm

    directions = [(-0.5, -1.0), (0.4, -1.0), (1.0, 0.1), (-1.0, 0.2), (0.6, 1.0), (-0.3, 1.0)]
    paths, widths, values = _vessel_tree(rng, _lateral_hilum(anatomy, RIGHT), directions, 0.07)
    vessels = 0.08 * strokes(canvas, paths, widths, values, blur=0.004) * outline
    bone = _lateral_bones(canvas, anatomy, spine, front, back)
    return Chest("lateral", canvas, anatomy, tissue, bone, organs, vessels, air, aeration, lungs,
                 {side: depth_field for side in SIDES}, {side: wall_field for side in SIDES},
                 {side: free_field for side in SIDES}, heart, mediastinum)


def _lateral_hilum(anatomy: Anatomy, side: int) -> Point:
    """Lateral view: the hila project one behind the other, mid-way between sternum and spine."""
    return anatomy.sternum + 0.3 + 0.01 * side, anatomy.hilum_height(side)


def _lateral_diaphragm(canvas: Canvas, anatomy: Anatomy, side: int, front: float,
                       back: float) -> np.ndarray:
    """Aerated lung above one hemidiaphragm: highest anteriorly, deepest in the posterior sulcus."""
    top = front + 0.38 * (back - front)
    behind = np.clip((canvas.u - top) / (back - top), 0.0, None)
    ahead = np.clip((top - canvas.u) / (top - front), 0.0, None)
    line = anatomy.dome(side) + 0.11 * behind**2 + 0.035 * ahead**2
    return ramp(line - canvas.v, 0.008)


def _lateral_heart(canvas: Canvas, anatomy: Anatomy) -> np.ndarray:
    """Heart behind the lower sternum, growing backwards and upwards with the ratio."""
    scale = anatomy.ctr / 0.45
    centre = (anatomy.sternum + 0.1 + 0.08 * scale, anatomy.dome_right + 0.01)
    return ellipse(canvas, centre, (0.17 * scale, 0.17 * scale**0.5), -0.5, edge=0.03)


def _lateral_upper_mediastinum(canvas: Canvas, anatomy: Anatomy) -> np.ndarray:
    """Aortic arch and great vessels; a widened mediastinum fills the retrosternal space."""
    arch = 0.6 * ellipse(canvas, (anatomy.sternum + 0.25, anatomy.apex + 0.15), (0.075, 0.12),
                         0.3, edge=0.03)
    if anatomy.widening <= 0:
        return arch
    fullness = ellipse(canvas, (anatomy.sternum + 0.1, anatomy.apex + 0.17),
                       (0.03 + 1.6 * anatomy.widening, 0.13), edge=0.008)
    return np.maximum(arch, fullness)


def _lateral_airway(canvas: Canvas, anatomy: Anatomy) -> np.ndarray:
    """Lateral view: the trachea, running down and back to the carina."""
    trachea = [(anatomy.sternum + 0.24, 0.0), (anatomy.sternum + 0.27, anatomy.apex + 0.06),
               (anatomy.sternum + 0.31, anatomy.carina)]
    return strokes(canvas, [trachea], 0.024, blur=0.005)


def _lateral_bones(canvas: Canvas, anatomy: Anatomy, spine: np.ndarray, front: float,
                   back: float) -> np.ndarray:
    """Vertebral bodies and posterior elements, sternum, and the two sets of ribs."""
    u, v = canvas.u, canvas.v
    edge = max(canvas.pixel, 0.004)
    discs = ramp(np.cos(np.float32(2 * np.pi / 0.05) * (v - anatomy.apex)) + 0.75, 0.3)
    bodies = ramp(u - spine, edge) * ramp(spine + 0.085 - u, edge) * (0.7 + 0.3 * discs)
    posterior = ramp(u - spine - 0.1, 0.02) * ramp(spine + 0.18 - u, 0.04)
    sternum = strokes(canvas, [[(anatomy.sternum + 0.005, anatomy.apex + 0.03),
                                (anatomy.sternum - 0.012, anatomy.dome_right - 0.02)]], 0.02,
                      blur=0.003)
    bone = 0.16 * bodies + 0.06 * posterior + 0.14 * sternum
    along = np.clip((anatomy.spine + 0.06 - u) / _LATERAL_RIB_UNIT, 0.0, None)
    extent = ramp(u - front - 0.1, 0.2) * ramp(back + 0.05 - u, 0.04)
    right_phase = _rib_phase(v - _lateral_rib_curve(anatomy, u) - anatomy.first_rib,
                             anatomy.rib_spacing)
    for side, offset in ((RIGHT, 0.0), (LEFT, 0.5)):  # the two sides' ribs, half a space apart
        phase = right_phase - offset
        breaks = [rib_break for rib_break in anatomy.rib_breaks if rib_break.side == side]
        phase, gaps = _break_ribs(phase, along, breaks, _LATERAL_RIB_UNIT, canvas.pixel)
        count = ramp(phase + 0.5, 0.3) * ramp(11.5 - phase, 0.6)
        bone += 0.05 * _rib_bands(phase, anatomy.rib_spacing, 0.35, edge) * gaps * count * extent
    return bone
