"""The differentiable silhouette and part renderer (fitting.silhouette) against the z-buffer (render.raster),
against finite differences, and on the edge cases: nothing in view, one sample per batch row, CUDA.

Pixel convention (render.raster's and the renderer's): pixel centres at integers; a pixel is covered when its
centre lies in a projected front face, edges included.
"""
import numpy as np
import pytest
import torch

from fitting.body_model import load_body_model
from fitting.silhouette import mesh_edges, render_silhouette
from render.raster import rasterize

SIZE = (96, 112)                  # (width, height) px: not square, so x and y cannot be swapped unnoticed
FOCAL, CENTER = 150.0, (47.5, 55.5)


@pytest.fixture(scope="module")
def bodies():
    """Three posed open-model (small topology) bodies in float64, 2.5 m in front of the camera, and their faces."""
    model = load_body_model("open-small", dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    batch = 3
    pose = 0.35 * torch.randn(batch, 69, generator=gen, dtype=torch.float64)
    orient = torch.tensor([[np.pi, 0.0, 0.0]], dtype=torch.float64) + 0.3 * torch.randn(
        batch, 3, generator=gen, dtype=torch.float64)
    transl = torch.tensor([[0.0, 0.25, 2.5]], dtype=torch.float64).repeat(batch, 1)
    betas = torch.randn(batch, 10, generator=gen, dtype=torch.float64)
    vertices = model(betas, pose, orient, transl).vertices.detach()
    labels = model.layer.lbs_weights.argmax(1)                     # the 24 skinning parts, one per vertex
    return vertices, torch.as_tensor(model.faces), labels


def zbuffer(vertices: torch.Tensor, faces: torch.Tensor) -> np.ndarray:
    """render.raster's face index (H, W) for one (V, 3) mesh."""
    _, face_index = rasterize(vertices.double().numpy(), faces.numpy(), np.zeros((len(faces), 3)), FOCAL, CENTER,
                              SIZE)
    return face_index


def interior(picture: np.ndarray) -> np.ndarray:
    """Pixels whose 3 x 3 neighbourhood holds one value of `picture` (H, W): away from every boundary of it."""
    padded = np.pad(picture, 1, mode="edge")
    height, width = picture.shape
    same = np.ones(picture.shape, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            same &= padded[dy:dy + height, dx:dx + width] == picture
    return same


def distance_to_mesh(pixels: np.ndarray, vertices: torch.Tensor, faces: torch.Tensor) -> np.ndarray:
    """Distance (N,) px from pixel centres (N, 2) to the nearest projected front face (as render.raster draws)."""
    tri = vertices.double().numpy()[faces.numpy()]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    tri = tri[(normal * tri.mean(1)).sum(1) < 0]
    pts = FOCAL * tri[..., :2] / tri[..., 2:] + CENTER                           # (F, 3, 2)
    p = pixels[:, None, :].astype(np.float64)                                    # (N, 1, 2)
    best = np.full(len(pixels), np.inf)
    for i in range(3):
        a, b = pts[None, :, i], pts[None, :, (i + 1) % 3]
        t = np.clip(((p - a) * (b - a)).sum(-1) / ((b - a) ** 2).sum(-1), 0, 1)
        best = np.minimum(best, np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=-1).min(1))
    return best


def icosphere() -> tuple[torch.Tensor, torch.Tensor]:
    """A closed 12-vertex, 20-face sphere of radius 1 m, faces wound counter-clockwise seen from outside."""
    g = (1 + 5 ** 0.5) / 2
    v = torch.tensor([[-1, g, 0], [1, g, 0], [-1, -g, 0], [1, -g, 0], [0, -1, g], [0, 1, g], [0, -1, -g],
                      [0, 1, -g], [g, 0, -1], [g, 0, 1], [-g, 0, -1], [-g, 0, 1]], dtype=torch.float64)
    f = torch.tensor([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
                      [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9],
                      [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]])
    v = v / v.norm(dim=1, keepdim=True)
    outward = (torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=1) * v[f].mean(1)).sum(1) > 0
    assert outward.all()
    return v, f


def test_a_triangle_covers_the_pixel_centres_inside_it_edges_included():
    # the convention tests/test_render.py pins for the z-buffer: corners at pixel centres (1,1), (1,6), (6,1)
    z = 2.0
    vertices = torch.tensor([[[1 * z / 8, 1 * z / 8, z], [1 * z / 8, 6 * z / 8, z], [6 * z / 8, 1 * z / 8, z]]],
                            dtype=torch.float64)
    out = render_silhouette(vertices, torch.tensor([[0, 1, 2]]), 8.0, (0.0, 0.0), (10, 9), sigma=1e-6)
    ys, xs = np.nonzero(out.mask[0].numpy() > 0.5)
    assert set(zip(xs.tolist(), ys.tolist())) == {(x, y) for x in range(1, 7) for y in range(1, 7) if x + y <= 7}


def test_the_sharp_silhouette_is_the_zbuffers_coverage_pixel_for_pixel(bodies):
    vertices, faces, _ = bodies
    out = render_silhouette(vertices, faces, FOCAL, CENTER, SIZE, sigma=1e-6)
    for b in range(len(vertices)):
        face_index = zbuffer(vertices[b], faces)
        assert (face_index >= 0).sum() > 1000                       # a body, not a speck
        np.testing.assert_array_equal(out.face_index[b].numpy(), face_index)
        np.testing.assert_array_equal(out.mask[b].numpy() > 0.5, face_index >= 0)


def test_float32_and_sigma_one_differ_from_the_zbuffer_only_within_half_a_pixel_of_the_mesh(bodies):
    # Tolerance: sigma = 1 px grows the 0.5-level set by sigma / 2 = 0.5 px outside the contour, and float32 moves
    # a projected vertex by ~1e-5 px (a pixel centre on an edge may flip either way). So a pixel may differ from
    # the z-buffer only if its centre lies within 0.5 px (+ 1e-4 for float32) of a projected front face; every
    # other pixel, inside or outside, must agree exactly.
    vertices, faces, _ = bodies
    out = render_silhouette(vertices.float(), faces, FOCAL, CENTER, SIZE, sigma=1.0)
    for b in range(len(vertices)):
        covered = zbuffer(vertices[b], faces) >= 0
        differ = (out.mask[b].numpy() > 0.5) != covered
        ys, xs = np.nonzero(differ)
        assert 0 < len(xs) < 0.5 * covered.sum()
        assert distance_to_mesh(np.column_stack([xs, ys]), vertices[b], faces).max() <= 0.5 + 1e-4
        assert (out.mask[b].numpy()[covered & interior(covered)] == 1).all()
        soft = (out.mask[b].numpy() > 0) & (out.mask[b].numpy() < 1)
        assert soft.sum() > 100 and not (soft & covered).any()


def test_part_maps_follow_the_visible_face_and_sum_to_the_silhouette(bodies):
    # sharp (sigma -> 0): the argmax is the z-buffer's visible part at every covered pixel for a per-face
    # labelling, and wherever the visible face's three vertices share a part for a per-vertex one (elsewhere the
    # interpolated weights blend neighbouring parts); soft (sigma = 1 px): the parts still sum to the silhouette.
    vertices, faces, labels = bodies
    face_parts = labels[faces].mode(dim=1).values                  # a per-face labelling: the vertices' majority
    one_hot = torch.nn.functional.one_hot(labels).double()
    for sigma in (1e-6, 1.0):
        by_face = render_silhouette(vertices, faces, FOCAL, CENTER, SIZE, sigma=sigma, face_parts=face_parts)
        by_vertex = render_silhouette(vertices, faces, FOCAL, CENTER, SIZE, sigma=sigma, vertex_parts=one_hot)
        by_label = render_silhouette(vertices, faces, FOCAL, CENTER, SIZE, sigma=sigma, vertex_parts=labels)
        torch.testing.assert_close(by_face.parts.sum(1), by_face.mask)
        torch.testing.assert_close(by_vertex.parts.sum(1), by_vertex.mask)
        torch.testing.assert_close(by_label.parts, by_vertex.parts)  # labels are one-hot weights, computed sparsely
    same = (labels[faces] == labels[faces][:, :1]).all(1).numpy()  # faces whose three vertices share a part
    by_face = render_silhouette(vertices, faces, FOCAL, CENTER, SIZE, sigma=1e-6, face_parts=face_parts)
    by_vertex = render_silhouette(vertices, faces, FOCAL, CENTER, SIZE, sigma=1e-6, vertex_parts=one_hot)
    for b in range(len(vertices)):
        face_index = zbuffer(vertices[b], faces)
        covered = face_index >= 0
        np.testing.assert_array_equal(by_face.parts[b].argmax(0).numpy()[covered],
                                      face_parts.numpy()[face_index[covered]])
        uniform = covered & same[np.maximum(face_index, 0)]
        assert uniform.sum() > 0.5 * covered.sum()
        np.testing.assert_array_equal(by_vertex.parts[b].argmax(0).numpy()[uniform],
                                      labels[faces[face_index[uniform], 0]].numpy())
        assert (by_face.parts[b].sum(0).numpy()[~covered] == 0).all()


def test_gradients_match_finite_differences():
    v, f = icosphere()
    gen = torch.Generator().manual_seed(0)
    v = v + 0.05 * torch.randn(v.shape, generator=gen, dtype=torch.float64)     # no symmetric coincidences
    v = (v + torch.tensor([0.1, -0.05, 3.0], dtype=torch.float64))[None]
    size, focal, center = (24, 22), 20.0, (11.5, 10.5)
    parts = torch.rand(12, 3, generator=gen, dtype=torch.float64)
    parts = parts / parts.sum(1, keepdim=True)
    weight_mask = torch.rand(1, size[1], size[0], generator=gen, dtype=torch.float64)
    weight_parts = torch.rand(1, 3, size[1], size[0], generator=gen, dtype=torch.float64)

    def loss(x):
        out = render_silhouette(x, f, focal, center, size, sigma=1.5, vertex_parts=parts)
        return (weight_mask * out.mask).sum() + (weight_parts * out.parts).sum()

    x = v.clone().requires_grad_(True)
    loss(x).backward()
    checked = 0
    for vertex in range(12):
        for axis in range(3):
            h = 1e-6
            step = torch.zeros_like(v)
            step[0, vertex, axis] = h
            numeric = (loss(v + step) - loss(v - step)).item() / (2 * h)
            assert x.grad[0, vertex, axis].item() == pytest.approx(numeric, rel=1e-4, abs=1e-4)
            checked += abs(numeric) > 1e-2
    assert checked >= 12                                             # gradients that exist, not zeros agreeing


def test_an_empty_view_renders_zeros_with_zero_gradients(bodies):
    vertices, faces, labels = bodies
    behind = vertices * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)          # behind the camera
    aside = vertices + torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64)           # off the image
    x = torch.cat([behind, aside]).requires_grad_(True)
    out = render_silhouette(x, faces, FOCAL, CENTER, SIZE, vertex_parts=torch.nn.functional.one_hot(labels).double())
    assert out.mask.abs().sum() == 0 and out.parts.abs().sum() == 0 and (out.face_index == -1).all()
    (out.mask.sum() + out.parts.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() == 0


def test_samples_are_independent_of_their_batch(bodies):
    vertices, faces, labels = bodies
    edges = mesh_edges(faces)
    x = vertices.clone().requires_grad_(True)
    focal = torch.tensor([[150.0], [140.0], [160.0]], dtype=torch.float64)           # per-sample cameras
    center = torch.tensor([[47.5, 55.5], [45.0, 56.0], [50.0, 52.0]], dtype=torch.float64)
    together = render_silhouette(x, faces, focal, center, SIZE, edges=edges, face_parts=labels[faces[:, 0]])
    together.mask[1].sum().backward()
    assert x.grad[0].abs().sum() == 0 and x.grad[2].abs().sum() == 0 and x.grad[1].abs().sum() > 0
    for b in range(len(vertices)):
        alone = render_silhouette(vertices[b:b + 1], faces, focal[b:b + 1], center[b], SIZE, edges=edges,
                                  face_parts=labels[faces[:, 0]])
        torch.testing.assert_close(alone.mask[0], together.mask[b].detach(), rtol=0, atol=0)
        torch.testing.assert_close(alone.parts[0], together.parts[b].detach(), rtol=0, atol=0)


def test_bad_inputs_are_refused_in_one_line(bodies):
    vertices, faces, labels = bodies
    with pytest.raises(ValueError, match="vertices must be"):
        render_silhouette(vertices[0], faces, FOCAL, CENTER, SIZE)
    with pytest.raises(ValueError, match="sigma"):
        render_silhouette(vertices, faces, FOCAL, CENTER, SIZE, sigma=0.0)
    with pytest.raises(ValueError, match="vertex_parts must be"):
        render_silhouette(vertices, faces, FOCAL, CENTER, SIZE, vertex_parts=torch.ones(5, 2))
    with pytest.raises(ValueError, match="labels must be integers"):
        render_silhouette(vertices, faces, FOCAL, CENTER, SIZE, face_parts=-torch.ones(len(faces), dtype=torch.long))
    with pytest.raises(ValueError, match="more than two faces"):
        mesh_edges(torch.tensor([[0, 1, 2], [0, 1, 3], [0, 1, 4]]))


@pytest.mark.gpu
def test_cuda_renders_what_the_cpu_renders(bodies):
    vertices, faces, labels = bodies
    parts = torch.nn.functional.one_hot(labels).double()
    cpu_x = vertices.clone().requires_grad_(True)
    gpu_x = vertices.cuda().requires_grad_(True)
    cpu = render_silhouette(cpu_x, faces, FOCAL, CENTER, SIZE, vertex_parts=parts)
    gpu = render_silhouette(gpu_x, faces.cuda(), FOCAL, CENTER, SIZE, vertex_parts=parts.cuda())
    torch.testing.assert_close(gpu.mask.cpu(), cpu.mask)
    torch.testing.assert_close(gpu.parts.cpu(), cpu.parts)
    (cpu.mask.square().sum() + cpu.parts.square().sum()).backward()
    (gpu.mask.square().sum() + gpu.parts.square().sum()).backward()
    torch.testing.assert_close(gpu_x.grad.cpu(), cpu_x.grad)


def test_a_silhouette_loss_moves_a_body_to_its_silhouette():
    # the gradients drive a fit: translation recovered from a silhouette alone (target drawn with the same sigma,
    # so the band's half-pixel growth is in both; docs/renderer.md)
    model = load_body_model("open-small", dtype=torch.float64)
    rest = model(torch.zeros(1, 10, dtype=torch.float64), torch.zeros(1, 69, dtype=torch.float64),
                 torch.tensor([[np.pi, 0.0, 0.0]], dtype=torch.float64)).vertices.detach()
    faces = torch.as_tensor(model.faces)
    edges = mesh_edges(faces)
    true_t = torch.tensor([0.05, 0.25, 3.0], dtype=torch.float64)
    target = render_silhouette(rest + true_t, faces, 60.0, (31.5, 31.5), (64, 64), edges=edges).mask
    t = torch.tensor([-0.10, 0.15, 3.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([t], lr=0.01)
    for _ in range(90):
        optimizer.zero_grad()
        mask = render_silhouette(rest + t, faces, 60.0, (31.5, 31.5), (64, 64), edges=edges).mask
        (mask - target).square().sum().backward()
        optimizer.step()
    assert (t.detach() - true_t).abs().max() < 0.01                 # m; it started 15 cm off in x
