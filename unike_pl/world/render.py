"""Drawing a scene: a jittered, noisy RGB picture whose content is exactly the scene's attributes.

A companion is drawn as one solid neutral shape (near-black on a light background, near-white on a dark
one: never one of the colour classes, never textured) in the free part of the picture on its side of the
group, level with the group's centroid, so where it lies relative to the group is never in doubt.

Objects are drawn at `SUPERSAMPLE` times the output resolution and box-filtered down, which anti-aliases
edges and keeps thin stripes and dots legible at 64x64. All geometry is given as fractions of the image
side, so any `image_size` gives the same pictures at another resolution.
"""

from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from unike_pl.world.scenes import Scene

SUPERSAMPLE = 4


@dataclass(frozen=True)
class ColourSpec:
    """A colour class: hue centre and half-width in degrees, saturation and value ranges in [0, 1]."""

    hue: float
    hue_jitter: float
    saturation: tuple[float, float]
    value: tuple[float, float]


# Hue windows of neighbouring classes never overlap, so every rendering is unambiguous to a careful eye.
COLOUR_SPECS: dict[str, ColourSpec] = {
    "red": ColourSpec(0.0, 6.0, (0.78, 0.92), (0.80, 0.95)),
    "orange": ColourSpec(28.0, 5.0, (0.80, 0.95), (0.90, 1.00)),
    "yellow": ColourSpec(55.0, 5.0, (0.75, 0.90), (0.88, 1.00)),
    "green": ColourSpec(125.0, 12.0, (0.65, 0.85), (0.60, 0.80)),
    "blue": ColourSpec(218.0, 8.0, (0.70, 0.88), (0.80, 0.95)),
    "purple": ColourSpec(272.0, 8.0, (0.60, 0.80), (0.65, 0.85)),
    "pink": ColourSpec(330.0, 6.0, (0.40, 0.55), (0.92, 1.00)),
}

# Where a group may lie, as (x0, y0, x1, y1) fractions of the side. Regions of neighbouring positions
# overlap near the corners; `_centroid_fits` then decides, so a label is never ambiguous.
REGIONS: dict[str, tuple[float, float, float, float]] = {
    "left": (0.02, 0.04, 0.48, 0.96),
    "right": (0.52, 0.04, 0.98, 0.96),
    "top": (0.04, 0.02, 0.96, 0.48),
    "bottom": (0.04, 0.52, 0.96, 0.98),
    "center": (0.19, 0.19, 0.81, 0.81),
}
# Bounding-circle radius of one object, as a fraction of the side. The largest values are what still lets
# 4 small or 3 large objects share a side region; the classes stay well apart (ratio about 1.5).
SIZE_RADIUS: dict[str, tuple[float, float]] = {"small": (0.085, 0.10), "large": (0.13, 0.145)}
# Smallest gap between two objects' bounding circles (each keeps half of it to its cell border).
GAP = 0.015
# Width of the untextured rim, as a fraction of the side: it keeps the silhouette of a striped or dotted
# object readable even where its dark pattern meets a dark background.
RIM = 0.018
# A side group's centroid lies at least this far from the middle along its axis ...
SIDE_OFFSET = 0.18
# ... and at least this much further along its axis than across it; a centre group stays this close.
SIDE_DOMINANCE = 0.08
CENTER_TOLERANCE = 0.10
BACKGROUND_GREY: dict[str, tuple[float, float]] = {"light": (165.0, 215.0), "dark": (25.0, 70.0)}
# The companion: bounding radius (a little smaller than a small object) and its grey on each background.
COMPANION_RADIUS = (0.07, 0.08)
COMPANION_GREY: dict[str, tuple[float, float]] = {"light": (15.0, 40.0), "dark": (228.0, 250.0)}
# Where the companion's centre lies along the relation's axis (fractions of the side, from the side it is
# on): beyond the half a side group fills, or in the margin a centred group leaves (the centre region
# starts at 0.19, so the companion's edge stays clear of it).
COMPANION_ALONG_SIDE = (0.12, 0.38)
COMPANION_MARGIN = 0.19
# How far the companion may stray across the axis from the group's centroid.
COMPANION_ACROSS_JITTER = 0.06
_MAX_LAYOUT_TRIES = 200


@dataclass(frozen=True)
class PlacedObject:
    """One drawn object: centre and bounding radius in output pixels, rotation in degrees."""

    x: float
    y: float
    radius: float
    rotation: float


@dataclass(frozen=True)
class Rendering:
    pixels: np.ndarray  # (size, size, 3) uint8
    objects: tuple[PlacedObject, ...]
    companion: PlacedObject | None = None


def _unit_outline(shape: str) -> list[tuple[float, float]] | None:
    """Polygon vertices inside the unit circle (y down); None for the circle, drawn as an ellipse."""
    if shape == "circle":
        return None
    if shape == "square":
        return [(math.cos(a), math.sin(a)) for a in np.deg2rad([45, 135, 225, 315])]
    if shape == "triangle":
        return [(math.cos(a), math.sin(a)) for a in np.deg2rad([-90, 30, 150])]
    if shape == "diamond":
        # Narrow rhombus: a square turned by 45 degrees would look like a diamond, and rotation is small.
        return [(0.0, -1.0), (0.6, 0.0), (0.0, 1.0), (-0.6, 0.0)]
    if shape == "star":
        return [
            (radius * math.cos(a), radius * math.sin(a))
            for k, a in enumerate(np.deg2rad(np.arange(-90, 270, 36)))
            for radius in [1.0 if k % 2 == 0 else 0.45]
        ]
    if shape == "cross":
        arm, length = 0.32, 1.0
        scale = 1.0 / math.hypot(arm, length)
        corners = [
            (arm, -length),
            (arm, -arm),
            (length, -arm),
            (length, arm),
            (arm, arm),
            (arm, length),
            (-arm, length),
            (-arm, arm),
            (-length, arm),
            (-length, -arm),
            (-arm, -arm),
            (-arm, -length),
        ]
        return [(x * scale, y * scale) for x, y in corners]
    raise ValueError(f"no outline for shape {shape!r}")


def _centroid_fits(position: str, cx: float, cy: float) -> bool:
    dx, dy = cx - 0.5, cy - 0.5
    if position == "center":
        return max(abs(dx), abs(dy)) <= CENTER_TOLERANCE
    along, across = {"left": (-dx, dy), "right": (dx, dy), "top": (-dy, dx), "bottom": (dy, dx)}[position]
    return along >= SIDE_OFFSET and abs(across) <= along - SIDE_DOMINANCE


def _grids(count: int, region: tuple[float, float, float, float], radius: float) -> list[tuple[int, int]]:
    """(rows, cols) grids with at least `count` cells, each large enough for one object."""
    width, height = region[2] - region[0], region[3] - region[1]
    need = 2 * radius + GAP
    grids = []
    for rows in range(1, count + 1):
        cols = math.ceil(count / rows)
        if width / cols >= need and height / rows >= need:
            grids.append((rows, cols))
    return grids


def layout(scene: Scene, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """Object centres and bounding radius, as fractions of the side.

    Each object gets its own cell of a grid laid over the position's region, so objects never overlap and
    never leave the image; layouts whose centroid would read as another position are drawn again.
    """
    region = REGIONS[scene.position]
    radius = float(rng.uniform(*SIZE_RADIUS[scene.size]))
    grids = _grids(scene.count, region, radius)
    if not grids:
        raise ValueError(f"{scene.count} {scene.size} objects do not fit the {scene.position} region")
    inset = radius + GAP / 2
    for _ in range(_MAX_LAYOUT_TRIES):
        rows, cols = grids[int(rng.integers(len(grids)))]
        cell_w = (region[2] - region[0]) / cols
        cell_h = (region[3] - region[1]) / rows
        cells = rng.choice(rows * cols, size=scene.count, replace=False)
        centres = []
        for cell in cells:
            row, col = divmod(int(cell), cols)
            x0, y0 = region[0] + col * cell_w, region[1] + row * cell_h
            x = float(rng.uniform(x0 + inset, x0 + cell_w - inset))
            y = float(rng.uniform(y0 + inset, y0 + cell_h - inset))
            centres.append((x, y))
        cx = sum(x for x, _ in centres) / len(centres)
        cy = sum(y for _, y in centres) / len(centres)
        if _centroid_fits(scene.position, cx, cy):
            return [(x, y, radius) for x, y in centres]
    raise RuntimeError(f"no layout found for {scene}")


def companion_place(
    scene: Scene, group: list[tuple[float, float, float]], rng: np.random.Generator
) -> tuple[float, float, float]:
    """The companion's centre and bounding radius (fractions of the side), on its side of the group."""
    radius = float(rng.uniform(*COMPANION_RADIUS))
    if scene.position == "center":
        # In the margin: the centred group's objects stay inside [0.19, 0.81] on both axes.
        low, high = radius + GAP, COMPANION_MARGIN - radius - GAP / 2
    else:
        low, high = COMPANION_ALONG_SIDE
    distance = float(rng.uniform(low, high))  # from the image border on the companion's side
    horizontal = scene.relation in ("left", "right")
    centroid = sum((x if not horizontal else y) for x, y, _ in group) / len(group)  # across the axis
    across = float(np.clip(centroid + rng.uniform(-1, 1) * COMPANION_ACROSS_JITTER, 0.3, 0.7))
    along = distance if scene.relation in ("left", "above") else 1.0 - distance
    return (along, across, radius) if horizontal else (across, along, radius)


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    outline: list[tuple[float, float]] | None,
    cx: float,
    cy: float,
    r: float,
    rotation: float,
) -> None:
    """One filled shape of bounding radius `r` on a canvas (pixels); `outline` from `_unit_outline`."""
    if outline is None:
        # A disc of the full bounding radius looks bigger than the polygons: draw it at 0.9.
        rr = 0.9 * r
        draw.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], fill=255)
        return
    cos_t, sin_t = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    draw.polygon(
        [(cx + r * (u * cos_t - v * sin_t), cy + r * (u * sin_t + v * cos_t)) for u, v in outline],
        fill=255,
    )


def _object_rgb(colour: str, rng: np.random.Generator) -> np.ndarray:
    spec = COLOUR_SPECS[colour]
    hue = (spec.hue + rng.uniform(-spec.hue_jitter, spec.hue_jitter)) % 360.0
    rgb = colorsys.hsv_to_rgb(hue / 360.0, rng.uniform(*spec.saturation), rng.uniform(*spec.value))
    return np.array(rgb, dtype=np.float32) * 255.0


def _background(tone: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A grey with a linear gradient in a random direction and a faint tint; (size, size, 3) float."""
    grey = rng.uniform(*BACKGROUND_GREY[tone])
    amplitude = rng.uniform(0.0, 25.0 if tone == "light" else 15.0)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    ramp = (
        math.cos(angle) * coords[None, :] + math.sin(angle) * coords[:, None]
    )  # (size, size), in [-0.7, 0.7]
    tint = rng.uniform(-4.0, 4.0, size=3).astype(np.float32)
    return (grey + amplitude * ramp)[:, :, None] + tint[None, None, :]


def _window(x: float, y: float, radius: float, canvas: int) -> tuple[int, int, int, int]:
    """The canvas pixels (x0, y0, x1, y1) of a bounding circle, clipped to the canvas."""
    return (
        max(0, int(x - radius)),
        max(0, int(y - radius)),
        min(canvas, int(math.ceil(x + radius))),
        min(canvas, int(math.ceil(y + radius))),
    )


def _pattern(
    texture: str, objects: list[tuple[float, float, float]], canvas: int, rng: np.random.Generator
) -> np.ndarray | None:
    """Where the darker pattern colour goes, as a (canvas, canvas) mask; None for solid objects.

    `objects` are (x, y, radius) in canvas pixels; only their bounding boxes are computed.
    """
    if texture == "solid":
        return None
    full = np.zeros((canvas, canvas), dtype=bool)
    if texture == "striped":
        period = 0.065 * canvas
        angle = math.radians(rng.choice([45.0, 135.0]) + rng.uniform(-10.0, 10.0))
        phase = rng.uniform(0.0, period)
        cos_a, sin_a = math.cos(angle), math.sin(angle)
    elif texture == "dotted":
        spacing, dot = 0.07 * canvas, 0.02 * canvas
    else:
        raise ValueError(f"unknown texture {texture!r}")
    for x, y, radius in objects:
        x0, y0, x1, y1 = _window(x, y, radius, canvas)
        # Broadcast a row of x and a column of y instead of building a grid: (1, cols) op (rows, 1).
        xs = np.arange(x0, x1, dtype=np.float32)[None, :]
        ys = np.arange(y0, y1, dtype=np.float32)[:, None]
        if texture == "striped":
            inside = ((xs * cos_a + ys * sin_a + phase) % period) < 0.45 * period
        else:
            # Centre a dot on each object (give or take a little): thin small shapes could show none.
            ox, oy = (spacing / 2 - np.array([x, y]) + rng.uniform(-0.15, 0.15, size=2) * spacing) % spacing
            dx = (xs + ox) % spacing - spacing / 2
            dy = (ys + oy) % spacing - spacing / 2
            inside = dx**2 + dy**2 < dot**2
        full[y0:y1, x0:x1] = inside
    return full


def _coverage(mask: Image.Image, image_size: int) -> np.ndarray:
    """Fraction of each output pixel covered by a supersampled 0/255 mask; (size, size, 1) float."""
    small = mask.resize((image_size, image_size), Image.Resampling.BOX)
    return (np.asarray(small, dtype=np.float32) / 255.0)[:, :, None]


def render_scene(scene: Scene, rng: np.random.Generator, image_size: int = 64) -> Rendering:
    """One picture of `scene`; a different `rng` gives another picture of the same content."""
    placements = layout(scene, rng)
    canvas = image_size * SUPERSAMPLE
    base_rotation = 0.0 if scene.shape == "circle" else rng.uniform(-12.0, 12.0)
    silhouette_image = Image.new("L", (canvas, canvas), 0)
    interior_image = Image.new("L", (canvas, canvas), 0)
    silhouette, interior = ImageDraw.Draw(silhouette_image), ImageDraw.Draw(interior_image)
    outline = _unit_outline(scene.shape)
    objects = []
    for x, y, radius in placements:
        rotation = 0.0 if outline is None else base_rotation + rng.uniform(-4.0, 4.0)
        cx, cy, r = x * canvas, y * canvas, radius * canvas
        for draw, scale in ((silhouette, 1.0), (interior, 1.0 - RIM / radius)):
            _draw_shape(draw, outline, cx, cy, r * scale, rotation)
        objects.append(PlacedObject(x * image_size, y * image_size, radius * image_size, rotation))

    rgb = _object_rgb(scene.colour, rng)
    background = _background(scene.tone, image_size, rng)
    on_canvas = [(x * canvas, y * canvas, radius * canvas) for x, y, radius in placements]
    pattern = _pattern(scene.texture, on_canvas, canvas, rng)
    covered = _coverage(silhouette_image, image_size)
    patterned = np.zeros_like(covered)
    if pattern is not None:
        textured = (np.asarray(interior_image) > 127) & pattern  # (canvas, canvas)
        patterned = _coverage(Image.fromarray(textured.astype(np.uint8) * 255), image_size)
    # The pattern is a darker shade of the same hue, so a texture never changes the colour class.
    picture = background * (1.0 - covered) + rgb * (covered - patterned) + (0.35 * rgb) * patterned
    companion = None
    if scene.has_companion:
        x, y, radius = companion_place(scene, placements, rng)
        shape = _unit_outline(scene.companion)
        rotation = 0.0 if shape is None else rng.uniform(-12.0, 12.0)
        mask = Image.new("L", (canvas, canvas), 0)
        _draw_shape(ImageDraw.Draw(mask), shape, x * canvas, y * canvas, radius * canvas, rotation)
        companion_covered = _coverage(mask, image_size)
        grey = rng.uniform(*COMPANION_GREY[scene.tone])
        picture = picture * (1.0 - companion_covered) + grey * companion_covered
        companion = PlacedObject(x * image_size, y * image_size, radius * image_size, rotation)
    picture = picture + rng.normal(0.0, rng.uniform(1.5, 5.0), size=picture.shape)
    pixels = np.clip(np.rint(picture), 0, 255).astype(np.uint8)
    return Rendering(pixels=pixels, objects=tuple(objects), companion=companion)


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG encoding with fixed settings and no metadata, so equal pixels give equal bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
