"""The one pinhole projection (core.pinhole) against the textbook formula, for numpy and torch, and every camera
that uses it: SMPLify's batched form, the crop camera of pictures, Human3.6M's distorting cameras."""
import math

import numpy as np
import pytest
import torch

from core.camera import project
from core.frames import CropCamera
from core.pinhole import pinhole
from pipelines.adapters.h36m import Camera

POINTS = np.array([[0.3, -0.2, 2.0], [-1.1, 0.45, 3.5], [0.0, 0.0, 0.8], [0.05, 1.9, 12.0]])
FOCAL, CENTER = (1000.0, 1100.0), (320.0, 240.0)


def textbook(points, focal, center):
    """u = fx·X/Z + cx, v = fy·Y/Z + cy, one point at a time."""
    return np.array([[focal[0] * x / z + center[0], focal[1] * y / z + center[1]] for x, y, z in points])


def test_numpy_and_torch_give_the_textbook_projection():
    expected = textbook(POINTS, FOCAL, CENTER)
    np.testing.assert_allclose(expected[0], [470.0, 130.0])  # the formula itself: 1000·0.15 + 320, 1100·-0.1 + 240
    from_numpy = pinhole(POINTS, FOCAL, CENTER)
    from_torch = pinhole(torch.as_tensor(POINTS), torch.tensor(FOCAL), torch.tensor(CENTER))
    assert isinstance(from_numpy, np.ndarray) and from_numpy.dtype == np.float64
    assert isinstance(from_torch, torch.Tensor) and from_torch.dtype == torch.float64
    np.testing.assert_allclose(from_numpy, expected, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(from_torch.numpy(), from_numpy)  # one formula: the same float64 operations
    # a scalar focal is fx = fy; float32 tensors stay float32; lists are taken as numpy takes them
    np.testing.assert_allclose(pinhole(POINTS.tolist(), 800.0, CENTER), textbook(POINTS, (800.0, 800.0), CENTER),
                               atol=1e-9)
    single = pinhole(torch.as_tensor(POINTS, dtype=torch.float32), 800.0, CENTER)
    assert single.dtype == torch.float32
    np.testing.assert_allclose(single.numpy(), textbook(POINTS, (800.0, 800.0), CENTER), rtol=1e-6)


def test_torch_projection_keeps_the_graph():
    points = torch.tensor(POINTS, requires_grad=True)
    pinhole(points, torch.tensor(FOCAL), torch.tensor(CENTER))[:, 0].sum().backward()
    x, z = POINTS[:, 0], POINTS[:, 2]
    np.testing.assert_allclose(points.grad.numpy(), np.stack([FOCAL[0] / z, 0 * z, -FOCAL[0] * x / z ** 2], -1),
                               atol=1e-9)  # du/dX = fx/Z, du/dY = 0, du/dZ = -fx·X/Z²


@pytest.mark.parametrize("focal", [900.0, torch.tensor([900.0, 1200.0]), torch.tensor([[900.0, 950.0],
                                                                                          [1200.0, 1210.0]])])
def test_batched_project_is_the_pinhole_of_each_example(focal):
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    translation = torch.tensor([[0.1, -0.2, 4.0], [0.0, 0.3, 6.0]], dtype=torch.float64)
    center = torch.tensor([[112.0, 112.0], [300.0, 200.0]], dtype=torch.float64)
    out = project(points, translation, focal, center)
    for b in range(2):
        f = torch.as_tensor(focal, dtype=torch.float64)
        fb = (f, f) if f.dim() == 0 else (f[b], f[b]) if f.dim() == 1 else tuple(f[b])
        expected = textbook((points[b] + translation[b]).numpy(), [float(v) for v in fb], center[b].tolist())
        np.testing.assert_allclose(out[b].numpy(), expected, atol=1e-9)


def test_crop_camera_is_the_pinhole():
    camera = CropCamera(focal=5000.0 * 1.25, center=(139.5, 141.0), res=300)
    np.testing.assert_allclose(camera.project(POINTS), textbook(POINTS, (6250.0, 6250.0), (139.5, 141.0)), atol=1e-9)


def h36m_reference(points, f, c, k, p):
    """Human3.6M's distortion as 3d-pose-baseline's ``cameras.project_point_radial`` writes it, one point at a time."""
    out = []
    for x_cam, y_cam, z_cam in points:
        x, y = x_cam / z_cam, y_cam / z_cam
        r2 = x * x + y * y
        radial = 1 + k[0] * r2 + k[1] * r2 ** 2 + k[2] * r2 ** 3
        tan = p[0] * y + p[1] * x
        xd, yd = x * (radial + tan) + p[1] * r2, y * (radial + tan) + p[0] * r2
        out.append([f[0] * xd + c[0], f[1] * yd + c[1]])
    return np.array(out)


def test_h36m_camera_distorts_the_ray_then_projects_it():
    # intrinsics of the size of Human3.6M's (S1, camera 54138969: f ~ 1145 px, k1 ~ -0.2)
    f, c = np.array([1145.05, 1143.78]), np.array([512.54, 515.45])
    k, p = np.array([-0.2071, 0.2478, -0.0031]), np.array([-0.0014, -0.0010])
    points = np.array([[300.0, -200.0, 4000.0], [-900.0, 700.0, 3000.0], [10.0, 1500.0, 5200.0]])  # mm
    camera = Camera(name="54138969", R=np.eye(3), T=np.zeros(3), f=f, c=c, k=k, p=p)
    np.testing.assert_allclose(camera.project(points), h36m_reference(points, f, c, k, p), rtol=0, atol=1e-9)
    # the distortion is not negligible there (so the check above means something) ...
    assert np.abs(camera.project(points) - pinhole(points, f, c)).max() > 5.0
    # ... and without it the camera is the pinhole
    plain = Camera(name="54138969", R=np.eye(3), T=np.zeros(3), f=f, c=c, k=np.zeros(3), p=np.zeros(2))
    np.testing.assert_allclose(plain.project(points), pinhole(points, f, c), rtol=0, atol=1e-9)
    assert math.isclose(plain.project(points)[0, 0], 1145.05 * 300.0 / 4000.0 + 512.54, abs_tol=1e-9)
