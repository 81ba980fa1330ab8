"""The one renderer (render.raster): its pixel convention pinned by meshes of known coverage, the winding it takes
for the outside, depth order, shading, and the overlay that sample and model pictures use.

Convention: pixel centres at integers (pixel (i, j) covers [i - 0.5, i + 0.5] × [j - 0.5, j + 0.5]); a pixel is
drawn when its centre lies in a projected triangle, edges included. The cameras below use focal 8 px and powers of
two, so every projected corner is exact. Triangles are listed counter-clockwise seen from the camera (their
right-hand normal points at it: their outside faces us).
"""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.pinhole import pinhole
from render.raster import AMBIENT, rasterize, render_mesh

FOCAL, CENTER, SIZE = 8.0, (0.0, 0.0), (10, 9)   # focal px, principal point px, (width, height) px
TRIANGLE_PX = [(1, 1), (1, 6), (6, 1)]            # covers the 21 centres x, y >= 1 with x + y <= 7
TRIANGLE_COVER = {(x, y) for x in range(1, 7) for y in range(1, 7) if x + y <= 7}
DATA = Path(__file__).resolve().parents[1] / "fitting" / "data"


def at_pixels(corners_px, z: float = 1.0) -> np.ndarray:
    """Camera-frame vertices (N, 3) at depth ``z`` that project to ``corners_px`` (N, 2) with FOCAL and CENTER."""
    corners = np.asarray(corners_px, dtype=np.float64)
    return np.column_stack([corners * z / FOCAL, np.full(len(corners), z)])


def covered(face_index: np.ndarray) -> set[tuple[int, int]]:
    ys, xs = np.nonzero(face_index >= 0)
    return set(zip(xs.tolist(), ys.tolist()))


def grey(count: int) -> np.ndarray:
    return np.full((count, 3), 200.0)


def test_a_triangle_covers_the_pixel_centres_inside_it_edges_included():
    vertices = at_pixels(TRIANGLE_PX)
    np.testing.assert_array_equal(pinhole(vertices, FOCAL, CENTER), TRIANGLE_PX)
    _, face_index = rasterize(vertices, np.array([[0, 1, 2]]), grey(1), FOCAL, CENTER, SIZE)
    assert covered(face_index) == TRIANGLE_COVER and len(TRIANGLE_COVER) == 21  # the hypotenuse x + y = 7 is in


def test_a_square_on_pixel_edges_covers_exactly_the_pixels_inside():
    # corners on pixel *edges* (half-integers): pixels 1..3 x 2..5; were pixel corners at integers, 4 x 5 pixels
    vertices = at_pixels([(0.5, 1.5), (0.5, 5.5), (3.5, 5.5), (3.5, 1.5)], z=2.0)
    _, face_index = rasterize(vertices, np.array([[0, 1, 2], [0, 2, 3]]), grey(2), FOCAL, CENTER, SIZE)
    assert covered(face_index) == {(x, y) for x in range(1, 4) for y in range(2, 6)}


def test_the_nearest_face_wins_and_is_shaded_by_its_angle_to_the_camera():
    near = at_pixels([(0, 0), (0, 8), (8, 0)], z=1.0)
    far = at_pixels([(0, 0), (0, 8), (8, 0)], z=3.0)  # the same footprint, behind
    colours = np.array([[0.0, 250.0, 0.0], [250.0, 0.0, 0.0]])
    pixels, face_index = rasterize(np.concatenate([far, near]), np.array([[0, 1, 2], [3, 4, 5]]), colours, FOCAL,
                                   CENTER, SIZE)
    drawn = face_index >= 0
    assert (face_index[drawn] == 1).all() and drawn.sum() == 45  # x + y <= 8: 9 + 8 + … + 1 centres
    centroid = near.mean(0)
    shade = AMBIENT + (1 - AMBIENT) * centroid[2] / np.linalg.norm(centroid)  # light from the camera
    np.testing.assert_array_equal(pixels[drawn], np.tile([int(250 * shade), 0, 0], (drawn.sum(), 1)))
    assert not pixels[~drawn].any()


def test_faces_seen_from_behind_or_behind_the_camera_are_not_drawn():
    front = at_pixels(TRIANGLE_PX)
    behind = at_pixels([(2, 2), (2, 7), (7, 2)], z=-1.0)
    faces = np.array([[0, 1, 2], [0, 2, 1], [3, 4, 5]])  # outside towards us; the same wound away; behind us
    _, face_index = rasterize(np.concatenate([front, behind]), faces, grey(3), FOCAL, CENTER, SIZE)
    assert set(np.unique(face_index)) == {-1, 0}


BOX_QUADS = ((0, 2, 3, 1), (4, 5, 7, 6), (0, 1, 5, 4), (2, 6, 7, 3), (0, 4, 6, 2), (1, 3, 7, 5))


def box(center) -> tuple[np.ndarray, np.ndarray]:
    """A 2 m cube at ``center`` and its 12 triangles wound outward, two per side in the order z−, z+, y−, y+, x−,
    x+."""
    vertices = np.array([[x, y, z] for z in (-1.0, 1.0) for y in (-1.0, 1.0) for x in (-1.0, 1.0)]) + center
    return vertices, np.array([t for a, b, c, d in BOX_QUADS for t in ((a, b, c), (a, c, d))])


def volume(vertices, faces) -> float:
    """The signed volume of a closed mesh: > 0 when it is wound outward."""
    tri = np.asarray(vertices, dtype=np.float64)[faces]
    return float(np.einsum("fi,fi->", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])) / 6.0)


def sides_seen(vertices, faces) -> set[int]:
    _, index = rasterize(vertices, faces, grey(len(faces)), 20.0, (30.0, 30.0), (90, 90))
    return set((np.unique(index[index >= 0]) // 2).tolist())


def test_a_closed_mesh_shows_its_outside():
    vertices, faces = box((0.0, 0.0, 6.0))
    assert volume(vertices, faces) == pytest.approx(8.0)
    assert sides_seen(vertices, faces) == {0}                        # straight ahead: the near side only
    assert sides_seen(vertices + (1.5, 1.5, 0.0), faces) == {0, 2, 4}  # ahead, down right: near, top, left sides
    assert sides_seen(vertices, faces[:, ::-1]) == {1, 2, 3, 4, 5}   # wound inward: inside out (far side and walls)


@pytest.mark.parametrize("name", ["open_body.npz", "open_body_small.npz"])
def test_the_open_model_is_wound_outward(name):
    """The rule `rasterize` culls by holds for the open model: its mesh's volume is positive (~66 litres)."""
    with np.load(DATA / name) as npz:
        assert 0.055 < volume(npz["v_template"], npz["f"]) < 0.075


@pytest.mark.parametrize("opacity", [1.0, 0.6])
def test_render_mesh_blends_the_shaded_mesh_over_the_picture(opacity):
    picture = Image.new("RGB", SIZE, (10, 20, 30))
    vertices = at_pixels(TRIANGLE_PX)
    out = np.asarray(render_mesh(picture, vertices, np.array([[0, 1, 2]]), FOCAL, CENTER, colour=(200, 100, 50),
                                 opacity=opacity)).astype(float)
    centroid = vertices.mean(0)
    mesh = np.floor(np.array([200, 100, 50]) * (AMBIENT + (1 - AMBIENT) * centroid[2] / np.linalg.norm(centroid)))
    inside = np.zeros(SIZE[::-1], bool)
    for x, y in TRIANGLE_COVER:
        inside[y, x] = True
    blended = np.rint((1 - opacity) * np.array([10.0, 20.0, 30.0]) + opacity * mesh)
    np.testing.assert_array_equal(out[inside], np.tile(blended, (21, 1)))
    np.testing.assert_array_equal(out[~inside], np.tile([10, 20, 30], ((~inside).sum(), 1)))
