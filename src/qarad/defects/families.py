"""One painter per defect family. Each takes (image, region, params, rng) with numeric params
already resolved and returns (painted image, polarity actually drawn); `renderer.render` clips,
restricts the change to the region and computes the mask.

Every painter first builds its geometry as an alpha map inside the region, then measures the
material under and around it, so the defect's tone is set relative to the local mean and spread,
and paints that tone with the material's own light and grain (`material.retone`): one light
direction per render shades grooves, pits, dents and broken edges; outlines carry fine noise.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .geometry import (centreline, direction, distance_inside, interior_point, normal, radial_profile,
                       random_walk, ray_extent, resample, shape_field, smooth_noise, smoothstep, stroke_alpha)
from .material import (AMPLITUDE_CEIL, LIGHT_FROM, borrowed_grain, composite, light_ratio, measure, neutral, relief,
                       retone, rough_edge, surface, tone, toward)
from .vocab import COLOURS, LUMA

# Share of the grain that shows through each kind of paint (1 = all of the material's texture).
TEXTURE = {"stroke": 0.5, "crack": 0.3, "stain": 0.85, "floor": 0.6, "lip": 1.0}
GROOVE_DEPTH = {"scratch": 0.4, "crack": 0.25}  # lit flank of a groove, in units of the defect's amplitude
GROOVE_BLUR_PX = 0.7  # how far a groove's walls reach beyond its stroke
WIDTH_WOBBLE = 0.25  # relative std of a stroke's width along its length
# A pit's lip is raised only a little: real blowholes show a faint rim, not a bright halo.
LIP_AMPLITUDE = 0.5
HOLE_WALL = 0.35  # share of a hole's radius its wall takes to slope down to the floor
EDGE_NOISE_PX = {"hole": 0.35, "stain": 0.6, "break": 0.5, "print_line": 0.3}  # outline roughness


def _other(polarity: str) -> str:
    return "bright" if polarity == "dark" else "dark"


def _path(region: np.ndarray, p, rng: np.random.Generator, spacing: float = 1.0) -> np.ndarray:
    """A piece (`extent` of its length) of the region's centreline along the defect's angle."""
    line = resample(centreline(region, p.angle), spacing)
    keep = max(2, int(round(p.extent * len(line))))
    if keep >= len(line):
        return line
    start = int(rng.integers(0, len(line) - keep + 1))
    return line[start:start + keep]


def _half_width(region: np.ndarray, path: np.ndarray) -> float:
    """Distance from the path's middle point to the region's outline: room across the path."""
    mid = np.clip(np.round(path[len(path) // 2]).astype(int), 0, np.array(region.shape) - 1)
    return max(1.0, float(distance_inside(region)[mid[0], mid[1]]))


def _blob_radius(region, p, rng, spread: float, scale: float) -> tuple[np.ndarray, float, float]:
    """Centre, minor radius and aspect of a blob that fits the region's room around the centre."""
    dist = distance_inside(region)
    centre, depth = interior_point(rng, region, dist, spread=spread)
    radius = max(1.5, p.extent * depth * scale)
    aspect = p.aspect
    if aspect > 1.3:  # elongated: only as long as the region allows along the angle
        reach = ray_extent(region, centre, p.angle, radius * aspect * 1.5)
        aspect = max(1.0, min(aspect, p.extent * reach * scale / radius))
    return centre, radius, aspect


def _wobble(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) width factor along a stroke: it narrows and widens as real scratches and cracks do."""
    if n < 3:
        return np.ones(n)
    return np.clip(1.0 + WIDTH_WOBBLE * smooth_noise(rng, (n,), max(1.0, n / 12)), 0.4, 1.6)


def _groove(out: np.ndarray, alpha: np.ndarray, light: np.ndarray, amp: float, depth: float) -> np.ndarray:
    """A cut into the surface: the wall facing the light catches it, the other is in shadow; the
    brightest flank is `depth` * amp brighter than the material. The walls slope over about a
    pixel either side of the stroke (the blur), so the flanks show next to it, not only on it."""
    shade = relief(-ndimage.gaussian_filter(alpha, GROOVE_BLUR_PX), light)
    return out + (depth * amp * shade / max(float(np.abs(shade).max()), 1e-6))[..., None]


def paint_scratch(image, region, p, rng):
    path = _path(region, p, rng)
    n, nrm = len(path), normal(p.angle)
    half = _half_width(region, path)
    if n > 4:  # a gentle bow: real scratches are rarely ruler-straight
        bow = rng.uniform(-1, 1) * min(0.05 * n, 0.5 * half)
        path = path + (bow * np.sin(np.pi * np.linspace(0, 1, n)))[:, None] * nrm
    strokes = []
    spacing = min(rng.uniform(2.0, 3.5) * max(1.0, p.width), half)
    for i in range(p.count):  # parallel strands of one scrape: main one centred, others alternate sides
        offset = (i + 1) // 2 * spacing * (1 if i % 2 else -1)
        if abs(offset) > half:  # no room left in the region for more strands
            break
        lo, hi = (0.0, 1.0) if i == 0 else (rng.uniform(0.0, 0.35), rng.uniform(0.65, 1.0))
        pts = path[int(lo * (n - 1)):max(int(hi * (n - 1)), int(lo * (n - 1)) + 1) + 1] + offset * nrm
        taper = np.sin(np.pi * np.linspace(0.0, 1.0, len(pts))) if len(pts) > 2 else np.ones(len(pts))
        weight = taper ** 0.35 * (0.8 + 0.2 * np.clip(smooth_noise(rng, (len(pts),), max(1.0, len(pts) / 8)), -1, 1))
        width = p.width * (0.55 + 0.45 * taper) * (1.0 if i == 0 else 0.75) * _wobble(rng, len(pts))
        strokes.append((pts, width, weight))
    alpha = stroke_alpha(region.shape, strokes) * region
    mat, surf = measure(image, region, alpha), surface(image, region)
    amp, pol = tone(mat, p)
    target = toward(mat, amp, pol)
    if pol == "bright":  # freshly exposed metal or plastic: paler and less saturated than the surface
        target = 0.7 * target + 0.3 * target.mean()
    out = composite(image, alpha, retone(target, mat, surf, TEXTURE["stroke"]))
    return _groove(out, alpha, direction(rng.uniform(*LIGHT_FROM)), amp, GROOVE_DEPTH["scratch"]), pol


def paint_crack(image, region, p, rng):
    path = _path(region, p, rng, spacing=2.5)
    m, nrm = len(path), normal(p.angle)
    if m > 2:  # jagged: a pinned random walk across the path plus per-vertex zigzag
        walk = np.cumsum(rng.normal(0.0, 0.7, m))
        walk -= np.linspace(walk[0], walk[-1], m)
        zig = rng.normal(0.0, 0.8, m)
        zig[[0, -1]] = 0.0
        path = path + (0.6 * walk + zig)[:, None] * nrm
    taper = (0.35 + 0.65 * np.sin(np.pi * np.linspace(0.0, 1.0, m)) ** 0.5) * _wobble(rng, m)
    strokes = [(path, p.width * taper, 1.0)]
    for _ in range(p.count if m > 3 else 0):
        i = int(rng.integers(1, m - 1))
        heading = p.angle + rng.choice([-1, 1]) * rng.uniform(25, 70) + (180.0 if rng.random() < 0.3 else 0.0)
        branch = random_walk(rng, path[i], heading, rng.uniform(0.15, 0.45) * m * 2.5, step=2.0, turn=20.0)
        bw = p.width * taper[i] * 0.65 * np.linspace(1.0, 0.45, len(branch))
        strokes.append((branch, bw, 1.0))
        if rng.random() < 0.4 and len(branch) > 3:  # second-order twig
            j = int(rng.integers(1, len(branch) - 1))
            twig = random_walk(rng, branch[j], heading + rng.choice([-1, 1]) * rng.uniform(25, 60),
                               rng.uniform(0.3, 0.6) * len(branch) * 2.0, step=2.0, turn=20.0)
            strokes.append((twig, bw[j] * 0.7 * np.linspace(1.0, 0.5, len(twig)), 1.0))
    alpha = stroke_alpha(region.shape, strokes) * region
    mat, surf = measure(image, region, alpha), surface(image, region)
    amp, pol = tone(mat, p)
    target = toward(mat, min(AMPLITUDE_CEIL, 1.3 * amp), pol)
    out = composite(image, alpha, retone(target, mat, surf, TEXTURE["crack"]))
    return _groove(out, alpha, direction(rng.uniform(*LIGHT_FROM)), amp, GROOVE_DEPTH["crack"]), pol


def paint_hole(image, region, p, rng):
    dist = distance_inside(region)
    centre, depth = interior_point(rng, region, dist, spread=0.75)
    rim = p.width
    r_minor = max(1.5, p.extent * (depth - 0.5 * rim))
    aspect = p.aspect
    if aspect > 1.3:
        reach = ray_extent(region, centre, p.angle, r_minor * aspect * 1.5)
        aspect = max(1.0, min(aspect, p.extent * (reach - 0.5 * rim) / r_minor))
    rn, u, v = shape_field(region.shape, centre, r_minor, aspect, p.angle, radial_profile(rng, 0.05))
    edge = rough_edge((1.0 - rn) * r_minor, rng, EDGE_NOISE_PX["hole"])  # px inside the outline, < 0 outside
    rn = 1.0 - edge / r_minor
    inside = np.clip(edge + 0.5, 0.0, 1.0) * region
    ring = np.clip(rim / 2 + 0.5 - np.abs(-edge - rim / 2), 0.0, 1.0) * region  # lip just outside
    light = direction(rng.uniform(*LIGHT_FROM))
    lu, lv = light @ direction(p.angle), light @ normal(p.angle)
    cos_phi = (u * lu + v * lv) / (np.sqrt(u ** 2 + v ** 2) + 1e-6)  # pixel bearing vs light
    mat, surf = measure(image, region, np.maximum(inside, ring)), surface(image, region)
    amp, pol = tone(mat, p)
    deep = toward(mat, min(AMPLITUDE_CEIL, 1.4 * amp), pol)
    # The inner wall opposite the light faces it and catches some; the lip's outer slope on
    # the light's side is lit. Both make the hole read as a depression, not a flat dot. The
    # floor is the same material in shadow: another patch of its grain, not a flat fill.
    wall = (np.clip(rn, 0, 1) ** 2 * np.clip(-cos_phi, 0, 1))[..., None]
    slope = smoothstep(edge / max(1.0, HOLE_WALL * r_minor))[..., None]  # the walls slope down to the floor
    inner = mat.mean + (deep + (mat.mean - deep) * 0.55 * wall - mat.mean) * (0.35 + 0.65 * slope)
    floor = retone(inner, mat, surf, TEXTURE["floor"], borrowed_grain(image, surf, rng))
    lip = ring * (0.4 + 0.6 * np.clip(cos_phi, 0, 1))
    out = composite(image, lip, retone(toward(mat, LIP_AMPLITUDE * amp, _other(pol)), mat, surf, TEXTURE["lip"]))
    return composite(out, inside, floor), pol


def paint_stain(image, region, p, rng):
    centre, radius, aspect = _blob_radius(region, p, rng, spread=0.6, scale=1.15)
    irregular = p.shape == "irregular"
    rn, _, _ = shape_field(region.shape, centre, radius, aspect, p.angle, radial_profile(rng, 0.35 if irregular else 0.12))
    feather = max(1.0, 0.2 * radius)
    edge = rough_edge((1.0 - rn) * radius, rng, EDGE_NOISE_PX["stain"], scale=1.5)
    body = smoothstep((edge + 0.5) / feather)
    if irregular:  # satellite droplets splashed around the main stain
        for _ in range(int(rng.integers(1, 4))):
            spot = centre + direction(rng.uniform(0, 360)) * radius * rng.uniform(1.1, 1.5)
            r = radius * rng.uniform(0.12, 0.28)
            d = shape_field(region.shape, spot, r)[0]
            body = np.maximum(body, smoothstep((1.0 - d) * r / max(0.8, 0.4 * r)))
    mottle = 0.78 + 0.22 * np.clip(smooth_noise(rng, region.shape, max(1.0, radius / 4)), -1.5, 1.5) / 1.5
    alpha = body * mottle * p.opacity * region
    ring = np.exp(-(((edge - 0.5 * feather) / (0.35 * feather + 0.5)) ** 2)) * p.opacity * region  # tide line
    mat, surf = measure(image, region, alpha), surface(image, region)
    amp, pol = tone(mat, p)
    if p.colour is not None:
        c = np.array(COLOURS[p.colour], np.float32)
        lum = np.clip(mat.luma + (amp if pol == "bright" else -amp), 0.03, 0.97)
        target = np.clip(c * lum / float(c @ LUMA), 0.0, 1.0)
    else:
        target = toward(mat, amp, pol)
    # a stain is translucent: the material's light and most of its grain show through it
    out = composite(image, alpha, retone(target, mat, surf, TEXTURE["stain"]))
    edge_tone = target * 0.7 if pol == "dark" else np.minimum(1.0, target * 1.15 + 0.05)
    return composite(out, 0.45 * ring, retone(edge_tone, mat, surf, TEXTURE["stain"])), pol


def paint_dent(image, region, p, rng):
    centre, radius, aspect = _blob_radius(region, p, rng, spread=0.7, scale=1.05)
    radius = max(radius, 3.0)
    rn, _, _ = shape_field(region.shape, centre, radius, aspect, p.angle)
    height = np.clip(1.0 - rn ** 2, 0.0, 1.0) ** 2 * radius * 0.6  # compact, smooth at the rim
    if p.polarity == "dark":  # dark = dent (pressed in), bright = bump (raised)
        height = -height
    shade = relief(height, direction(rng.uniform(*LIGHT_FROM)))
    shade /= max(float(np.abs(shade).max()), 1e-6)
    mat, surf = measure(image, region, np.abs(shade)), surface(image, region)
    amp, _ = tone(mat, p, adapt=False)  # shading is bipolar: both directions always have room
    shift = amp * shade + 0.5 * amp * np.clip(shade, 0, 1) ** 6  # plus a small specular glint
    # light reflected off the slope scales with the light the surface gets there
    return image + (shift * light_ratio(mat, surf) * region)[..., None], p.polarity


def paint_break(image, region, p, rng):
    centre, radius, aspect = _blob_radius(region, p, rng, spread=0.7, scale=1.3)
    if p.shape != "elongated":
        aspect = min(aspect, 1.4)
    outline = radial_profile(rng, 0.25, jag=0.2, vertices=int(rng.integers(12, 28)))
    rn, u, v = shape_field(region.shape, centre, radius, aspect, p.angle, outline)
    edge = rough_edge((1.0 - rn) * radius, rng, EDGE_NOISE_PX["break"], scale=0.8)
    alpha = np.clip(edge + 0.5, 0.0, 1.0) * region  # sharp: broken material has no soft edge
    mat, surf = measure(image, region, alpha), surface(image, region)
    amp, pol = tone(mat, p)
    # What shows through the gap is out of the surface's light and carries another grain.
    fill = retone(neutral(mat, max(1.3 * amp, 0.2), pol), mat, surf, TEXTURE["floor"], borrowed_grain(image, surf, rng))
    # The remaining material stands above what shows through the gap and casts a shadow into
    # it along the outline facing the light: a step edge, unlike a hole's raised rim.
    light = direction(rng.uniform(*LIGHT_FROM))
    lu, lv = light @ direction(p.angle), light @ normal(p.angle)
    facing = np.clip((u * lu + v * lv) / (np.sqrt(u ** 2 + v ** 2) + 1e-6), 0.0, 1.0)
    shadow = np.clip(1.0 - edge / max(2.0, 0.25 * radius), 0.0, 1.0) * facing
    return composite(image, alpha, fill * (1.0 - 0.5 * shadow[..., None])), pol


def paint_discoloration(image, region, p, rng):
    # diffuse: always nearly as large as the region allows, size only nudges it (the soft
    # falloff leaves a visible core of about half the radius)
    centre, radius, aspect = _blob_radius(region, p, rng, spread=0.85, scale=1.0)
    radius = radius / p.extent * (0.7 + 0.5 * p.extent)
    profile = radial_profile(rng, 0.3 if p.shape == "irregular" else 0.1)
    rn, _, _ = shape_field(region.shape, centre, max(radius, 3.0), min(aspect, 1.6), p.angle, profile)
    alpha = smoothstep((1.0 - rn) / 0.9) * (0.85 + 0.15 * np.clip(smooth_noise(rng, region.shape, radius / 3 + 1), -1, 1))
    alpha = alpha * region
    mat = measure(image, region, alpha)
    amp, pol = tone(mat, p)
    if p.colour is not None:  # hue shift at nearly constant luminance, texture untouched
        c = np.array(COLOURS[p.colour], np.float32)
        chroma = c - float(c @ LUMA)
        chroma /= float(np.abs(chroma).max())
        shift = 1.4 * float(np.clip(amp, 0.1, 0.3))  # hue reads weaker than brightness; cap saturation
        shifted = image + shift * chroma + (0.3 * amp if pol == "bright" else -0.3 * amp)
    elif pol == "bright":  # faded / bleached: paler and greyer
        grey = (image @ LUMA)[..., None]
        shifted = 0.5 * image + 0.5 * grey + amp
    else:  # darkened, keeping the texture
        shifted = image * max(0.0, 1.0 - amp / max(mat.luma, 1e-3))
    return composite(image, alpha, shifted), pol


def paint_fray(image, region, p, rng):
    path = _path(region, p, rng)
    half = max(2.0, _half_width(region, path))
    nrm, side = normal(p.angle), float(rng.choice([-1.0, 1.0]))
    base = path - side * 0.6 * half * nrm  # the torn edge runs along one side; fibres reach across
    lengths = (0.8, 1.8) if p.shape == "thin" else (1.2, 2.4)
    strokes = [(base, 1.0, 0.4)]
    for start in rng.integers(0, len(base), p.count):
        outward = side if rng.random() < 0.8 else -side
        length = max(3.0, rng.uniform(*lengths) * half) * (1.0 if outward == side else 0.4)
        fibre = random_walk(rng, base[start] + rng.normal(0.0, 0.5, 2), p.angle - 90.0 * outward + rng.normal(0, 28),
                            length, step=1.0, turn=9.0)
        taper = np.linspace(1.0, 0.5, len(fibre))
        strokes.append((fibre, p.width * rng.uniform(0.7, 1.2) * taper, rng.uniform(0.6, 1.0) * taper))
    alpha = stroke_alpha(region.shape, strokes) * region
    mat, surf = measure(image, region, alpha), surface(image, region)
    amp, pol = tone(mat, p)
    target = toward(mat, min(AMPLITUDE_CEIL, 1.5 * amp), pol)
    return composite(image, alpha, retone(target, mat, surf, TEXTURE["stroke"])), pol


def paint_print_line(image, region, p, rng):
    line = resample(centreline(region, p.angle), 1.0)
    n = len(line)
    length = max(2.0, p.extent * n)
    lo = int(length / 2)
    centre = line[n // 2] if n - 1 - lo < lo else line[int(rng.integers(lo, n - lo))]
    dist = distance_inside(region)
    cy, cx = np.clip(np.round(centre).astype(int), 0, np.array(region.shape) - 1)
    width = max(1.5, min(p.width, 2.0 * float(dist[cy, cx]) - 1.0))
    _, u, v = shape_field(region.shape, centre, 1.0, 1.0, p.angle)
    # a printed or etched track: straight edges and square ends, frayed at the pixel scale
    alpha = rough_edge(np.minimum(length / 2 - np.abs(u), width / 2 - np.abs(v)), rng, EDGE_NOISE_PX["print_line"])
    alpha = np.clip(alpha + 0.5, 0.0, 1.0)
    if p.shape == "bridge":  # solder/ink pads where the spurious track lands
        pad = 0.9 * width
        for end in (-1.0, 1.0):
            alpha = np.maximum(alpha, np.clip(np.minimum(pad - np.abs(u - end * length / 2), pad - np.abs(v)) + 0.5, 0, 1))
    alpha = alpha * region
    mat, surf = measure(image, region, alpha), surface(image, region)
    amp, pol = tone(mat, p)
    if p.shape == "gap":  # material missing along the track: the substrate's tone and grain
        target = retone(neutral(mat, max(1.2 * amp, 0.15), pol), mat, surf, TEXTURE["floor"],
                        borrowed_grain(image, surf, rng))
    else:
        target = retone(toward(mat, min(AMPLITUDE_CEIL, 1.3 * amp), pol), mat, surf, TEXTURE["stroke"])
    return composite(image, alpha, target), pol


PAINTERS = {
    "scratch": paint_scratch, "crack": paint_crack, "hole": paint_hole, "stain": paint_stain, "dent": paint_dent,
    "break": paint_break, "discoloration": paint_discoloration, "fray": paint_fray, "print_line": paint_print_line,
}
