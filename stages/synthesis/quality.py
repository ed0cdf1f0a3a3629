"""How good generated images are: a Fréchet distance on the project's image features, the
diagnosis classifier's agreement with the prompts, and a grid to look at.

The contrast map of a finding (the mean image of the studies with it minus that of the studies
without it, per view) shows where and how strongly the finding changes the picture on average;
drawn for real and generated images of the same prompts side by side, it tells a finding the
generator leaves out from one it draws in the wrong place or shape (their correlation is the
number). The Fréchet distance is FID's formula on the pooled features of the image encoder that
extract-features used (EfficientNet-Lite0 with ImageNet weights by default, not Inception, which is
not available offline). It depends on the number of images, so every distance in one evaluation is
taken between sets of the same size: the prompts' studies are split into two halves, and images
made for the first half (generated, or a baseline) are compared with the real images of the second
half; the real first half against the real second half is the floor a perfect generator would
reach. With a few hundred images the 1280 feature dimensions outnumber the samples, so the
distance is also given after projecting onto the leading principal axes of the training images'
features (`components`), where the covariances are estimated well.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from stages.core.artifacts import save_figure


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)) of two (n, d) feature sets.

    Tr (C_a C_b)^(1/2) is the sum of the singular values of A B^T / sqrt((n_a - 1)(n_b - 1)) for the
    centred sets A, B (the nonzero eigenvalues of C_a C_b are those of that matrix times its
    transpose): exact, and with fewer samples than dimensions far cheaper and steadier than a
    matrix square root of the singular d x d product. With more samples, the d x d form is used.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = a - mu_a, b - mu_b
    scale = (len(a) - 1) * (len(b) - 1)
    if min(len(a), len(b)) <= a.shape[1]:
        cross = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt(scale)
    else:
        cov_a, cov_b = ca.T @ ca / (len(a) - 1), cb.T @ cb / (len(b) - 1)
        w, v = np.linalg.eigh(cov_a)
        root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    traces = (ca ** 2).sum() / (len(a) - 1) + (cb ** 2).sum() / (len(b) - 1)
    return float(max(((mu_a - mu_b) ** 2).sum() + traces - 2 * cross, 0.0))


def principal_axes(features: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, (d, k) leading principal axes) of reference features."""
    mean = features.mean(0)
    _, _, vt = np.linalg.svd(features - mean, full_matrices=False)
    return mean, vt[:components].T


def noise_images(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """The unconditional-noise baseline: Gaussian noise around mid-grey, (n, size, size) uint8."""
    return np.clip(rng.normal(127.5, 64, (n, size, size)), 0, 255).astype(np.uint8)


def mean_images(means: np.ndarray, views: np.ndarray, rng: np.random.Generator, sigma: float = 8.0) -> np.ndarray:
    """The mean-image baseline: the training mean image of each requested view plus a little noise
    (sigma grey levels), so its features have a spread at all."""
    picked = means[views].astype(np.float64)
    return np.clip(picked + rng.normal(0, sigma, picked.shape), 0, 255).astype(np.uint8)


def halves(studies: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint, equally large (the smaller half wins) random halves of an array of study rows."""
    order = np.random.default_rng(seed).permutation(len(studies))
    half = len(studies) // 2
    return np.sort(studies[order[:half]]), np.sort(studies[order[half:2 * half]])


def finding_contrast(images: np.ndarray, positive: np.ndarray) -> np.ndarray | None:
    """Mean of the images with a finding minus the mean of those without, in grey levels (None
    unless both groups have images)."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return None
    images = np.asarray(images, dtype=np.float64)
    return images[positive].mean(0) - images[~positive].mean(0)


def save_contrasts(path: Path, rows: dict[str, list[tuple[str, np.ndarray]]], title: str) -> None:
    """A PNG: one row per finding, its (caption, contrast map) panels on one symmetric colour scale
    (red: brighter where the finding is, as fluid or a device; blue: darker)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(panels) for panels in rows.values())
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.0 * columns + 0.6, 2.1 * len(rows)), squeeze=False)
    for ax_row, (finding, panels) in zip(axes, rows.items()):
        limit = max(1.0, max(float(np.abs(m).max()) for _, m in panels))
        for ax, (caption, contrast) in zip(ax_row, panels):
            shown = ax.imshow(contrast, cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(caption, fontsize=7, pad=2)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in ax_row[len(panels):]:
            ax.axis("off")
        ax_row[0].set_ylabel(finding, fontsize=8)
        fig.colorbar(shown, ax=list(ax_row), fraction=0.025, pad=0.01).ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path, dpi=90)


def save_grid(path: Path, real: list[np.ndarray], generated: list[np.ndarray], captions: list[str],
              title: str) -> None:
    """A PNG: one row per prompt, its real views then the generated ones, captioned with its findings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(r) for r in real) + max(len(g) for g in generated)
    fig, axes = plt.subplots(len(real), columns, figsize=(1.9 * columns, 2.05 * len(real)), squeeze=False)
    for row, (r, g, caption) in enumerate(zip(real, generated, captions)):
        images = [("real", x) for x in r] + [("generated", x) for x in g]
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(images):
                kind, image = images[col]
                ax.imshow(image, cmap="gray", vmin=0, vmax=255)
                ax.set_title(kind, fontsize=7, pad=2)
            else:
                ax.axis("off")
        axes[row][0].set_ylabel("\n".join(textwrap.wrap(caption, 22)), fontsize=6, rotation=0, ha="right",
                                va="center", labelpad=4)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
