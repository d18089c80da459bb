"""The phantom's pulmonary vessels and airways: branching trees grown from each hilum and
rasterised as tapered tubes (:func:`.raster.tubes`), then drawn over the lesions."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import SOFT_INSIDE, Anatomy
from .raster import tubes, unit

VESSEL_HU = 40.0
AIRWAY_WALL_HU = 30.0


@dataclass
class Tree:
    """Segments of a branching tree (mm), with the radius at each end and the generation."""

    start: np.ndarray
    end: np.ndarray
    r_start: np.ndarray
    r_end: np.ndarray
    generation: np.ndarray

    def select(self, keep: np.ndarray) -> "Tree":
        return Tree(self.start[keep], self.end[keep], self.r_start[keep], self.r_end[keep],
                    self.generation[keep])

    def shifted(self, offset: np.ndarray, scale: float) -> "Tree":
        return Tree(self.start + offset, self.end + offset, self.r_start * scale,
                    self.r_end * scale, self.generation)

    @staticmethod
    def concat(trees: list["Tree"]) -> "Tree":
        return Tree(*(np.concatenate([getattr(t, f) for t in trees]) for f in
                      ("start", "end", "r_start", "r_end", "generation")))


def grow_tree(roots: np.ndarray, directions: np.ndarray, radius: float, inside,
              rng: np.random.Generator, r_min: float, centre: np.ndarray,
              max_generations: int = 30, max_segments: int = 6000) -> Tree:
    """Grow a branching tree, one generation at a time for all branch tips at once.

    Branching is asymmetric as in real vessels and bronchi: a major child carries on almost
    straight and barely thinner, a minor child leaves at 35-70 degrees much thinner. Segment
    length follows radius; children lean away from ``centre`` (the hilum) so the tree fills
    the lung, a branch that would leave the organ (``inside(points) -> bool``) ends halfway,
    and branches thinner than ``r_min`` stop.
    """
    p = np.asarray(roots, float)
    d = unit(np.asarray(directions, float))
    r = np.full(len(p), float(radius))
    parts: list[Tree] = []
    total = 0
    for g in range(max_generations):
        if len(p) == 0 or total >= max_segments:
            break
        length = (2.0 + 3.5 * r) * rng.uniform(0.8, 1.2, len(p))
        e = p + d * length[:, None]
        ok = inside(e)
        half = p + d * (0.5 * length[:, None])
        short = ~ok & inside(half)
        e = np.where(short[:, None], half, e)
        keep = ok | short | (g == 0)
        r_end = r * 0.95
        parts.append(Tree(p[keep], e[keep], r[keep], r_end[keep], np.full(int(keep.sum()), g)))
        total += int(keep.sum())
        go = keep & ~short
        p, d, r = e[go], d[go], r_end[go]
        if len(p) == 0:
            break
        w = unit(np.cross(d, rng.standard_normal(p.shape)))
        out = unit(p - centre)
        a_major = rng.uniform(np.deg2rad(3), np.deg2rad(18), len(p))
        a_minor = rng.uniform(np.deg2rad(35), np.deg2rad(70), len(p))
        d_major = unit(np.cos(a_major)[:, None] * d + np.sin(a_major)[:, None] * w + 0.15 * out)
        d_minor = unit(np.cos(a_minor)[:, None] * d - np.sin(a_minor)[:, None] * w + 0.25 * out)
        p = np.concatenate([p, p])
        d = np.concatenate([d_major, d_minor])
        r = np.concatenate([r * rng.uniform(0.84, 0.92, len(r)), r * rng.uniform(0.45, 0.75, len(r))])
        alive = r >= r_min
        p, d, r = p[alive], d[alive], r[alive]
    if not parts:
        return Tree(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0), np.zeros(0))
    return Tree.concat(parts)


def _lobar_directions(s: int) -> np.ndarray:
    """Upper, middle and lower lobe directions (z, y, x) from a hilum on side s."""
    lateral = float(s)
    return unit(np.array([[0.85, -0.05, 0.45 * lateral],
                          [0.05, -0.55, 0.85 * lateral],
                          [-0.8, 0.35, 0.4 * lateral]]))


def add_trees(anatomy: Anatomy, rng: np.random.Generator) -> None:
    """Pulmonary vessels and bronchi (running beside the arteries) from each hilum.

    Grown trees give the connected central vessels; short "twigs" scattered through each
    lung, oriented away from the hilum and thinner with distance from it, supply the many
    small vessels a slice cuts (growing a tree down to 0.5 mm would cost far more).
    """
    grid = anatomy.grid
    tissue = anatomy.tissue
    r_min = max(0.45, 0.3 * grid.spacing[1])
    segments, bronchi = [], []
    for s, hilum in anatomy.hilum.items():
        inside = lambda pts, s=s: anatomy.in_lung(pts, s)  # noqa: E731
        centre = hilum + np.array([0.0, 0.0, -s * 25.0])
        dirs = _lobar_directions(s) + rng.normal(0, 0.12, (3, 3))
        tree = grow_tree(np.repeat(hilum[None], 3, 0), dirs, rng.uniform(4.5, 5.5), inside, rng,
                         max(r_min, 1.2), centre)
        veins = grow_tree(np.repeat((hilum + [-25.0, 8.0, 0.0])[None], 2, 0),
                          _lobar_directions(s)[1:] + rng.normal(0, 0.15, (2, 3)),
                          rng.uniform(4.0, 5.0), inside, rng, max(r_min, 1.2), centre)
        segments += [tree, veins, _twigs(anatomy, s, hilum, r_min, rng)]
        big = tree.select(tree.r_end >= 1.0)
        side_step = unit(np.cross(big.end - big.start, [[1.0, 0.0, 0.0]]))
        bronchi.append(big.shifted(side_step * (big.r_start[:, None] * 1.9 + 0.5), 0.95))
    vessels = Tree.concat(segments)
    anatomy.vessels = tubes(grid, vessels.start, vessels.end, vessels.r_start,
                            vessels.r_end).within(tissue, SOFT_INSIDE)
    carina = anatomy.carina
    trachea = Tree(np.array([[grid.z()[-1] + 20.0, carina[1], carina[2]]]), carina[None],
                   np.array([8.5]), np.array([8.0]), np.array([0]))
    mains = [Tree(carina[None], h[None], np.array([6.5]), np.array([5.5]), np.array([0]))
             for h in anatomy.hilum.values()]
    airways = Tree.concat([trachea, *mains, *bronchi])
    wall = 0.5 + 0.12 * airways.r_start
    anatomy.airway_wall = tubes(grid, airways.start, airways.end, airways.r_start + wall,
                                airways.r_end + wall).within(tissue, SOFT_INSIDE)
    anatomy.airway_lumen = tubes(grid, airways.start, airways.end, airways.r_start,
                                 airways.r_end).within(tissue, SOFT_INSIDE)


#: Small vessels per cm3 of lung.
_TWIG_DENSITY = 1.5


def _twigs(anatomy: Anatomy, s: int, hilum: np.ndarray, r_min: float,
           rng: np.random.Generator) -> Tree:
    grid = anatomy.grid
    # Lung volume (cm3): footprint area times the height, less about 40% for the tapering.
    volume = float(np.count_nonzero(anatomy.side == s)) * grid.spacing[1] * grid.spacing[2] \
        * 0.6 * anatomy.body.lung_height / 1000.0
    centres = anatomy.sample_lung(rng, int(_TWIG_DENSITY * volume), s)
    away = centres - hilum
    dist = np.linalg.norm(away, axis=1)
    radius = np.clip(2.2 * np.exp(-dist / 60.0), 0.35, 1.8) * rng.uniform(0.75, 1.25, len(dist))
    keep = radius >= r_min
    centres, away, radius = centres[keep], away[keep], radius[keep]
    direction = unit(unit(away) + rng.normal(0, 0.35, away.shape))
    half = (1.5 + 3.0 * radius * rng.uniform(0.7, 1.5, len(radius)))[:, None] * direction
    return Tree(centres - half, centres + half, radius * 1.1, radius * 0.9, np.full(len(radius), 99))


def draw_trees(hu: np.ndarray, anatomy: Anatomy) -> None:
    """Vessels, then airway walls, then air in the airways (which also makes air
    bronchograms wherever the airways run through consolidation)."""
    anatomy.vessels.blend(hu, VESSEL_HU)
    anatomy.airway_wall.blend(hu, AIRWAY_WALL_HU)
    anatomy.airway_lumen.blend(hu, -1000.0)
