"""Procedural datasets, so that every command runs with no download.

``scenes``: street-like label maps in Cityscapes ids (road 7, sidewalk 8, building 11,
vegetation 21, sky 23, person 24, car 26), instanceIds in Cityscapes' encoding (id * 1000 + k
for each car and person, the class id elsewhere), and a photo-like rendering of each (textures
per class, shading, noise): task labels2photo.

``photos``: sharp photo-like images for deblurring: gradients, filled shapes with stripes and
checkers, thin strokes, sensor noise; plenty of edges, so blur lowers PSNR: task deblur.

Sample ``i`` of a split depends only on ``(seed, split, i)``, never on workers or shards, and
encodes to the same bytes on every run. Everything is vectorized numpy: about a millisecond
per 128x256 scene plus the PNG encodes.

    ids, instances, photo = street_scene(np.random.default_rng(0), 128, 256)
    plan = synth_plan("photos", count=500, size=(256, 256), seed=0, val_count=50)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asaptrain.data import labels as L
from asaptrain.data.convert import ConvertError, Item, Plan
from asaptrain.data.sources import encode_png

KINDS = ("scenes", "photos")
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


def _smooth(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Value noise in [0, 1]: a random grid every ``cell`` pixels, bilinearly interpolated."""
    gh, gw = int(h / cell) + 2, int(w / cell) + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    y, x = np.arange(h, dtype=np.float32) / cell, np.arange(w, dtype=np.float32) / cell
    y0, x0 = y.astype(np.int32), x.astype(np.int32)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _finish(rng: np.random.Generator, img: np.ndarray, noise_std: float) -> np.ndarray:
    """Global shading, sensor noise, clip to uint8."""
    h, w = img.shape[:2]
    img = img * (0.85 + 0.3 * _smooth(rng, h, w, max(h, w) / 3))[..., None]
    img = img + rng.normal(0, noise_std, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- street scenes


def street_scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: (ids uint8 HxW, instanceIds int32 HxW, photo uint8 HxWx3)."""
    Y = np.arange(h, dtype=np.float32)[:, None]
    X = np.arange(w, dtype=np.float32)[None, :]
    horizon = h * rng.uniform(0.38, 0.5)
    ids = np.full((h, w), L.SKY, dtype=np.uint8)
    photo = np.empty((h, w, 3), dtype=np.float32)

    # Sky: vertical gradient and soft clouds.
    t_sky = np.clip(Y / max(horizon, 1), 0, 1)[..., None]
    sky = np.array([90, 140, 215], np.float32) * (1 - t_sky) + np.array([190, 210, 235], np.float32) * t_sky
    clouds = np.clip(_smooth(rng, h, w, w / 6) * 1.6 - 0.7, 0, 1)[..., None]
    photo[:] = sky * (1 - clouds) + 245 * clouds

    # Buildings: a skyline of blocks, each with its own wall colour and a grid of windows.
    n_blocks = int(rng.integers(3, 9))
    cuts = np.sort(rng.uniform(0, w, n_blocks - 1))
    block = np.searchsorted(cuts, np.arange(w))
    tops = horizon - rng.uniform(0.12, 0.38, n_blocks) * h
    building = (Y >= tops[block][None, :]) & (Y < horizon)
    ids[building] = L.BUILDING
    walls = rng.uniform(70, 200, (n_blocks, 3)).astype(np.float32) * rng.uniform(0.6, 1.0, (n_blocks, 1))
    period_x, period_y = rng.uniform(5, 12, n_blocks)[block][None, :], rng.uniform(6, 12)
    windows = ((X % period_x) < period_x * 0.55) & ((Y % period_y) < period_y * 0.5)
    wall = walls[block][None, :, :] * (0.9 + 0.2 * _smooth(rng, h, w, 3))[..., None]
    wall = np.where(windows[..., None], np.array([45, 55, 75], np.float32), wall)
    photo = np.where(building[..., None], wall, photo)

    # Ground: a road in perspective towards a vanishing point, sidewalks, grass beyond.
    t = np.clip((Y - horizon) / (h - horizon), 0, 1)
    vx = w * rng.uniform(0.35, 0.65)
    half, side = w * rng.uniform(0.25, 0.45) * t + 0.5, w * rng.uniform(0.1, 0.22) * t
    ground, dx = Y >= horizon, np.abs(X - vx)
    road = ground & (dx <= half)
    sidewalk = ground & ~road & (dx <= half + side)
    grass = ground & ~road & ~sidewalk
    ids[road], ids[sidewalk], ids[grass] = L.ROAD, L.SIDEWALK, L.VEGETATION
    fine = rng.normal(0, 1, (h, w)).astype(np.float32)
    asphalt = (85 + 10 * fine + 20 * _smooth(rng, h, w, 8))[..., None] * np.ones(3, np.float32)
    dash = (np.abs(X - vx) < 0.5 + 1.5 * t) & ((np.log1p(np.maximum(Y - horizon, 0)) * 6) % 2 < 1)
    asphalt = np.where(dash[..., None], 230, asphalt)
    tiles = ((X - vx) % 7 < 1) | (Y % 5 < 1)
    paving = (np.where(tiles, 130, 175) + 6 * fine)[..., None] * np.array([1.0, 0.98, 0.95], np.float32)
    leaves = (0.5 + 0.7 * _smooth(rng, h, w, 2.5) + 0.1 * fine)[..., None] * np.array([60, 115, 40], np.float32)
    photo = np.where(road[..., None], asphalt, photo)
    photo = np.where(sidewalk[..., None], paving, photo)
    photo = np.where(grass[..., None], leaves, photo)

    # Trees: round canopies standing on the horizon, in front of the buildings.
    for _ in range(int(rng.integers(0, 5))):
        r = h * rng.uniform(0.06, 0.14)
        cy, cx = horizon - r * rng.uniform(0.6, 1.2), rng.uniform(0, w)
        canopy = (Y - cy) ** 2 + (X - cx) ** 2 < r * r
        ids[canopy] = L.VEGETATION
        photo = np.where(canopy[..., None], leaves * rng.uniform(0.7, 1.1), photo)

    instances = ids.astype(np.int32)
    _draw_objects(rng, ids, instances, photo, horizon, vx, w * 0.35, h)
    return ids, instances, _finish(rng, photo, 3.0)


def _draw_objects(rng, ids, instances, photo, horizon, vx, road_half, h) -> None:
    """Cars on the road and people on the sidewalks, far ones first so near ones occlude them."""
    objects = [("car", horizon + (h - horizon) * rng.uniform(0.2, 1.0)) for _ in range(int(rng.integers(1, 5)))]
    objects += [("person", horizon + (h - horizon) * rng.uniform(0.25, 1.0)) for _ in range(int(rng.integers(0, 4)))]
    counts = {"car": 0, "person": 0}
    H, W = ids.shape
    for kind, base in sorted(objects, key=lambda o: o[1]):
        t = (base - horizon) / (h - horizon)
        if kind == "car":
            cw = road_half * 1.1 * t * rng.uniform(0.8, 1.2)
            ch = cw * rng.uniform(0.5, 0.65)
            cx = vx + rng.uniform(-0.6, 0.6) * road_half * t
        else:
            ch = h * 0.4 * t * rng.uniform(0.8, 1.2)
            cw = ch * 0.35
            cx = vx + rng.choice([-1, 1]) * (road_half * t * 1.25)
        y0, y1 = int(max(0, base - ch)), int(min(H, base))
        x0, x1 = int(max(0, cx - cw / 2)), int(min(W, cx + cw / 2 + 1))
        if y1 - y0 < 2 or x1 - x0 < 2:
            continue
        yy = (np.arange(y0, y1, dtype=np.float32)[:, None] - (base - ch)) / ch  # 0 top .. 1 bottom
        xx = (np.arange(x0, x1, dtype=np.float32)[None, :] - cx) / (cw / 2)  # -1 .. 1
        colour = rng.uniform(20, 235, 3).astype(np.float32)
        if kind == "car":
            body = (yy > 0.4) & (np.abs(xx) <= 1)
            cabin = (yy <= 0.4) & (np.abs(xx) <= 0.75 - 0.3 * (0.4 - yy))
            mask = body | cabin
            glass = cabin & (yy > 0.08) & (np.abs(xx) <= 0.65 - 0.3 * (0.4 - yy))
            wheels = (yy > 0.82) & ((np.abs(xx + 0.6) < 0.2) | (np.abs(xx - 0.6) < 0.2))
            paint = np.where(glass[..., None], np.array([40, 50, 65], np.float32),
                             np.where(wheels[..., None], np.float32(25), colour * (1.1 - 0.4 * yy[..., None])))
            label = L.CAR
        else:
            head = ((yy - 0.09) / 0.09) ** 2 + (xx / 0.45) ** 2 <= 1
            torso = ((yy - 0.45) / 0.3) ** 2 + (xx / 0.9) ** 2 <= 1
            legs = (yy > 0.6) & (np.abs(np.abs(xx) - 0.35) < 0.25)
            mask = head | torso | legs
            paint = np.where(head[..., None], np.array([225, 180, 150], np.float32),
                             np.where(legs[..., None], colour * 0.4, colour))
            label = L.PERSON
        sl = (slice(y0, y1), slice(x0, x1))
        ids[sl][mask] = label
        instances[sl][mask] = L.instance_id(label, counts[kind])
        photo[sl][mask] = np.broadcast_to(paint, mask.shape + (3,))[mask]
        counts[kind] += 1


# ----------------------------------------------------------------------------- photos


def photo_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A sharp photo-like image (uint8 HxWx3) full of edges, stripes, checkers and strokes."""
    Y = np.arange(h, dtype=np.float32)[:, None]
    X = np.arange(w, dtype=np.float32)[None, :]
    theta = rng.uniform(0, 2 * np.pi)
    ramp = ((X * np.cos(theta) + Y * np.sin(theta)) / (h + w) + 0.5)[..., None]
    c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    img = c0 * (1 - ramp) + c1 * ramp + 40 * (_smooth(rng, h, w, max(h, w) / 5)[..., None] - 0.5)
    size = min(h, w)
    for _ in range(int(rng.integers(10, 22))):
        r = size * rng.uniform(0.04, 0.25)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        y0, y1, x0, x1 = int(max(0, cy - r)), int(min(h, cy + r + 1)), int(max(0, cx - r)), int(min(w, cx + r + 1))
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = Y[y0:y1] - cy, X[:, x0:x1] - cx
        shape = rng.integers(0, 4)
        if shape == 0:
            mask = np.broadcast_to(True, (y1 - y0, x1 - x0))
        elif shape == 1:
            mask = (yy / r) ** 2 + (xx / (r * rng.uniform(0.4, 1))) ** 2 <= 1
        elif shape == 2:  # triangle: inside three random half-planes through the box
            a = rng.uniform(0, 2 * np.pi) + np.array([0, 2.1, 4.2])
            mask = np.all([(xx * np.cos(t) + yy * np.sin(t)) < r * 0.5 for t in a], axis=0)
        else:
            d = np.sqrt(yy**2 + xx**2)
            mask = (d <= r) & (d >= r * rng.uniform(0.4, 0.8))
        a_col, b_col = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
        fill = rng.integers(0, 3)
        if fill == 0:
            pattern = np.zeros(mask.shape, bool)
        elif fill == 1:
            ang, freq = rng.uniform(0, np.pi), rng.uniform(0.25, 1.2)
            pattern = np.sin(freq * (xx * np.cos(ang) + yy * np.sin(ang))) > 0
        else:
            cell = rng.integers(2, 9)
            pattern = ((yy // cell + xx // cell) % 2) == 0
        pattern = np.broadcast_to(pattern, mask.shape)
        colours = np.where(pattern[..., None], b_col, a_col)
        img[y0:y1, x0:x1][mask] = colours[mask]
    for _ in range(int(rng.integers(4, 12))):  # thin strokes: the finest detail blur destroys
        p = rng.uniform([0, 0], [h, w])
        q = p + rng.uniform(-0.45, 0.45, 2) * size
        width = rng.uniform(0.6, 2.5)
        y0, y1 = int(max(0, min(p[0], q[0]) - 3)), int(min(h, max(p[0], q[0]) + 4))
        x0, x1 = int(max(0, min(p[1], q[1]) - 3)), int(min(w, max(p[1], q[1]) + 4))
        yy, xx = Y[y0:y1] - p[0], X[:, x0:x1] - p[1]
        d = q - p
        s = np.clip((yy * d[0] + xx * d[1]) / max(float(d @ d), 1e-6), 0, 1)
        mask = (yy - s * d[0]) ** 2 + (xx - s * d[1]) ** 2 <= width**2
        img[y0:y1, x0:x1][mask] = rng.choice([15.0, 240.0]) + rng.uniform(-10, 10, 3)
    return _finish(rng, img, 2.0)


# ----------------------------------------------------------------------------- rows and plan


def synth_row(key: str, spec: tuple) -> dict[str, Any]:
    kind, seed, split, index, h, w = spec
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    meta = {"kind": kind, "seed": seed, "index": index}
    if kind == "scenes":
        ids, instances, photo = street_scene(rng, h, w)
        return {"key": key, "input": encode_png(ids), "input_format": "png", "target": encode_png(photo),
                "target_format": "png", "instance": encode_png(instances.astype(np.uint16)),
                "width": w, "height": h, "meta": meta}
    return {"key": key, "input": None, "input_format": None, "target": encode_png(photo_image(rng, h, w)),
            "target_format": "png", "instance": None, "width": w, "height": h, "meta": meta}


def synth_plan(kind: str, count: int, size: tuple[int, int], seed: int = 0, val_count: int | None = None) -> Plan:
    """``count`` train and ``val_count`` (default count // 10, at least 1) val samples of ``kind``."""
    if kind not in KINDS:
        raise ConvertError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    h, w = size
    if count < 1 or h < 16 or w < 16:
        raise ConvertError(f"synth needs --count >= 1 and --size of at least 16x16, got {count} and {h}x{w}")
    val_count = max(1, count // 10) if val_count is None else val_count
    bytes_per_px = 2.3 if kind == "scenes" else 1.9  # measured PNG sizes (level 1) of these images
    splits: dict[str, list[Item]] = {}
    for split, n in (("train", count), ("val", val_count)):
        if n > 0:
            splits[split] = [Item(f"{kind}-{split}-{i:07d}", int(h * w * bytes_per_px), (kind, seed, split, i, h, w))
                             for i in range(n)]
    task = "labels2photo" if kind == "scenes" else "deblur"
    return Plan(task, f"synth-{kind}", synth_row, splits, {"kind": kind, "size": [h, w], "seed": seed})


__all__ = ["KINDS", "street_scene", "photo_image", "synth_row", "synth_plan"]
