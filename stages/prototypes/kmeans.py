"""K-means initialisation of XProNet's shared cross-modal prototype matrix.

Each training study contributes a cross-modal feature: its visual feature (pooled over views)
concatenated with its report embedding, each L2-normalised first so neither modality dominates
the distance. Studies are grouped by label (binary, uncertain counted as positive, as XProNet
does; a study joins every group it is positive for). Each group is clustered into N prototypes:
N/2 from the original images' features and N/2 from the horizontally flipped ones.

Groups smaller than N/2 samples (documented rule): every sample becomes a prototype and the
remaining slots repeat them cyclically; an empty group is filled with the mean of all training
features. Both cases are logged and recorded in `prototypes.pkl`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import KMeans

from stages.core.artifacts import save_figure


def cross_modal(visual: np.ndarray, text: np.ndarray) -> np.ndarray:
    """[visual / |visual| ; text / |text|] per row."""
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    return np.concatenate([unit(visual), unit(text)], axis=1).astype(np.float32)


@dataclass
class Prototypes:
    """The initial prototype matrix (groups, N, D) and how each group was formed."""

    matrix: np.ndarray
    groups: list[str]
    counts: list[int]
    inertia: list[float]
    fallback: dict[str, str] = field(default_factory=dict)
    visual_dim: int = 0
    text_dim: int = 0


def _centres(samples: np.ndarray, n: int, seed: int, fill: np.ndarray) -> tuple[np.ndarray, float, str | None]:
    """n centres of `samples`: k-means when there are enough, else the documented fallback."""
    if len(samples) == 0:
        return np.repeat(fill[None], n, axis=0), 0.0, "empty group: filled with the mean of all training features"
    if len(samples) < n:
        return samples[np.arange(n) % len(samples)], 0.0, f"{len(samples)} samples < {n}: samples repeated"
    km = KMeans(n_clusters=n, n_init=10, random_state=seed).fit(samples)
    return km.cluster_centers_.astype(np.float32), float(km.inertia_), None


def group_members(binary: np.ndarray, features: np.ndarray, k: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """Row indices per group: the label groups when k equals the number of labels, else a
    global k-means over the features forms k groups."""
    if k == binary.shape[1]:
        return [np.flatnonzero(binary[:, g]) for g in range(k)], []
    assignment = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(features)
    return [np.flatnonzero(assignment == g) for g in range(k)], [f"cluster {g}" for g in range(k)]


def init_prototypes(visual: np.ndarray, visual_flip: np.ndarray, text: np.ndarray, binary: np.ndarray,
                    group_names: list[str], k: int, per_group: int, seed: int
                    ) -> tuple[Prototypes, list[np.ndarray]]:
    """Cluster each group's cross-modal features into `per_group` prototypes (half from flips);
    also return each group's member rows."""
    if per_group < 2 or per_group % 2:
        raise ValueError(f"--per-group must be an even number >= 2 (half original, half flipped), got {per_group}")
    original, flipped = cross_modal(visual, text), cross_modal(visual_flip, text)
    members, names = group_members(binary, original, k, seed)
    names = names or list(group_names)
    fill = original.mean(axis=0)
    matrix = np.zeros((k, per_group, original.shape[1]), dtype=np.float32)
    inertia, fallback = [], {}
    for g, rows in enumerate(members):
        half = per_group // 2
        a, inertia_a, note = _centres(original[rows], half, seed, fill)
        b, inertia_b, _ = _centres(flipped[rows], half, seed, fill)
        matrix[g] = np.concatenate([a, b])
        inertia.append(inertia_a + inertia_b)
        if note:
            fallback[names[g]] = note
    prototypes = Prototypes(matrix, names, [len(r) for r in members], inertia, fallback,
                            visual_dim=visual.shape[1], text_dim=text.shape[1])
    return prototypes, members


def plot_projection(features: np.ndarray, members: list[np.ndarray], prototypes: Prototypes, path) -> None:
    """PCA of the training features (each coloured by its first group) with the prototypes on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=0).fit(features)
    colour = np.full(len(features), -1)
    for g, rows in enumerate(members):
        colour[rows[colour[rows] == -1]] = g
    points, centres = pca.transform(features), pca.transform(prototypes.matrix.reshape(-1, features.shape[1]))
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(9, 7))
    for g, name in enumerate(prototypes.groups):
        ax.scatter(*points[colour == g].T, s=6, alpha=0.35, color=cmap(g % 20))
        group_centres = centres[g * prototypes.matrix.shape[1]:(g + 1) * prototypes.matrix.shape[1]]
        ax.scatter(*group_centres.T, s=60, marker="*", edgecolor="black", linewidth=0.5, color=cmap(g % 20), label=name)
    ax.set_title("training features (dots) and initial prototypes (stars), PCA")
    ax.legend(fontsize=7, markerscale=0.8, loc="best")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
