"""Smooth random fields on an axis-aligned grid.

A field is a low-order separable cosine series in world millimetres,

    f(x, y, z) = sum_{k,l,m < order} c_klm cos(pi k x / L + a_k) cos(pi l y / L + b_l) cos(pi m z / L + g_m),

with coefficients falling as ``1 / (1 + k^2 + l^2 + m^2)`` and random phases,
scaled so its standard deviation over the evaluated grid is ``sd``.  Because
the series is separable, evaluating it on a (Z, Y, X) grid costs a few small
matrix products, not one cosine per voxel and term.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SmoothField", "random_field", "grid_axes_mm"]

# Length over which the lowest non-constant term makes half a period.
_LENGTH_MM = 200.0


def grid_axes_mm(affine: np.ndarray, shape_zyx: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World coordinates (mm) of the voxel centres along x, y and z of an
    axis-aligned grid: three 1-D float64 arrays of lengths X, Y and Z."""
    z, y, x = shape_zyx
    return (
        affine[0, 0] * np.arange(x) + affine[0, 3],
        affine[1, 1] * np.arange(y) + affine[1, 3],
        affine[2, 2] * np.arange(z) + affine[2, 3],
    )


class SmoothField:
    """One random smooth field; call it on grid axes to evaluate.

    Parameters
    ----------
    rng : numpy.random.Generator
    order : int
        Terms per axis (1 gives a constant).
    """

    def __init__(self, rng: np.random.Generator, order: int = 3) -> None:
        k = np.arange(order)
        self.order = order
        self.phase = rng.uniform(0, 2 * np.pi, size=(3, order))
        weight = 1.0 / (1.0 + k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
        coef = rng.standard_normal((order, order, order)) * weight
        coef[0, 0, 0] = 0.0  # zero-mean up to the phases' doing; the mean is removed on evaluation anyway
        self.coef = coef

    def _basis(self, axis: int, coords: np.ndarray) -> np.ndarray:
        k = np.arange(self.order)
        return np.cos(np.pi * k[None, :] * coords[:, None] / _LENGTH_MM + self.phase[axis][None, :])

    def __call__(self, x_mm: np.ndarray, y_mm: np.ndarray, z_mm: np.ndarray, *, sd: float) -> np.ndarray:
        """The field on the grid spanned by the axes: (Z, Y, X) float32 with
        mean 0 and standard deviation ``sd`` over that grid."""
        bx, by, bz = self._basis(0, x_mm), self._basis(1, y_mm), self._basis(2, z_mm)
        # c[k, l, m] (z-term k, y-term l, x-term m), contracted one axis at a time.
        t = np.einsum("klm,xm->klx", self.coef, bx)
        t = np.einsum("klx,yl->kyx", t, by)
        f = np.einsum("kyx,zk->zyx", t, bz)
        f -= f.mean()
        s = f.std()
        if s > 0:
            f *= sd / s
        return f.astype(np.float32)


def random_field(
    rng: np.random.Generator,
    axes_mm: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    sd: float,
    order: int = 3,
) -> np.ndarray:
    """A fresh smooth field with standard deviation ``sd`` on the grid of
    ``axes_mm`` = (x, y, z) coordinates: (Z, Y, X) float32."""
    return SmoothField(rng, order)(*axes_mm, sd=sd)
