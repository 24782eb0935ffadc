"""PNG figures: a compare run's side-by-side sample grid and metric-versus-sweep plots, training loss
curves, and the level-swap reconstructions of a two-level tokenizer."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import torch  # noqa: E402


def side_by_side(grids: dict[str, torch.Tensor], class_names: list[str], path: str) -> str:
    """Rows = variants, columns = classes; ``grids[name]`` is ``[C, 3, H, W]`` in [-1, 1]."""
    rows, cols = len(grids), max(len(g) for g in grids.values())
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols + 1.6, 1.1 * rows + 0.4), squeeze=False)
    for r, (name, images) in enumerate(grids.items()):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([]), ax.set_yticks([])
            if c < len(images):
                ax.imshow((images[c].float().clamp(-1, 1) * 0.5 + 0.5).permute(1, 2, 0).numpy())
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
            if r == 0 and c < len(class_names):
                ax.set_title(class_names[c], fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


SWAP_COLUMNS = {"image": "A", "reconstruction": "top A + bottom A", "swap_other": "B",
                "swap_keep_top": "top A + bottom B",
                "swap_keep_bottom": "top B + bottom A", "top_only": "top A alone"}


def level_swaps(examples: dict[str, torch.Tensor], title: str, path: str) -> str:
    """Rows = images A; columns = A, its partner B and the swapped decodes
    (:func:`stratagen.eval.level_swap_examples`), each ``[N, 3, H, W]`` in [-1, 1]."""
    columns = [(key, label) for key, label in SWAP_COLUMNS.items() if key in examples]
    rows = len(examples["image"])
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.3 * len(columns), 1.1 * rows + 0.6), squeeze=False)
    for c, (key, label) in enumerate(columns):
        for r in range(rows):
            ax = axes[r][c]
            ax.set_xticks([]), ax.set_yticks([])
            ax.imshow((examples[key][r].float().clamp(-1, 1) * 0.5 + 0.5).permute(1, 2, 0).numpy())
        axes[0][c].set_title(label, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sweep_plot(series: dict[str, list[tuple[str, float, float]]], sweep: str, metric: str, path: str) -> str:
    """One line per variant: ``metric`` at each point of ``sweep``, given as ``(label, mean, std)``;
    the std over seeds is drawn as an error bar (overlapping bars: a tie)."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, points in series.items():
        ax.errorbar([p for p, _, _ in points], [m for _, m, _ in points], yerr=[s for _, _, s in points],
                    marker="o", capsize=3, label=name)
    ax.set_xlabel(sweep), ax.set_ylabel(f"{metric} (mean ± std over seeds)"), ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_curves(tb_dir: str, out_dir: str) -> list[str]:
    """One PNG per component (``<kind>_<id>_loss.png``) of its ``loss/*`` scalars in ``tb_dir``."""
    import os

    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    events = EventMultiplexer().AddRunsFromDirectory(tb_dir)
    events.Reload()
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run in events.Runs():
        for tag in events.GetAccumulator(run).Tags()["scalars"]:
            component, _, name = tag.partition("/loss/")
            if name:
                points = [(e.step, e.value) for e in events.Scalars(run, tag)]
                curves.setdefault(component, {}).setdefault(name, []).extend(points)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for component, series in curves.items():
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for name, points in series.items():
            points.sort()
            ax.plot([s for s, _ in points], [v for _, v in points], label=name)
        ax.set_title(component), ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{component.replace('/', '_')}_loss.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
