"""Figures of the comparison: grouped bars of the five metrics, and the encoders' spaces in 2-D."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from unike_pl.backbones.loader import BackboneConfig  # noqa: E402
from unike_pl.compare.plan import Sweep  # noqa: E402
from unike_pl.compare.table import STD  # noqa: E402
from unike_pl.errors import read_torch_file  # noqa: E402
from unike_pl.io import atomic_write_bytes  # noqa: E402
from unike_pl.knowledge.cache import MemoryConfig, MemorySource, load_memory  # noqa: E402
from unike_pl.knowledge.encoders import DisentangledEncoders  # noqa: E402
from unike_pl.metrics import names  # noqa: E402

PLOTTED = (*names.TARGET_METRICS, *names.LOCALITY_METRICS, *names.NEIGHBOUR_METRICS)


def save_figure(figure: plt.Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def metric_bars(rows: list[dict[str, Any]], protocols: list[str], methods: list[str], path: Path) -> Path:
    """One panel per protocol: the five metrics and LDKE's two on the x axis, one bar per method (with its
    standard deviation over seeds as an error bar)."""
    figure, axes = plt.subplots(
        len(protocols), 1, figsize=(11, 3.4 * len(protocols)), squeeze=False, gridspec_kw={"hspace": 0.4}
    )
    width = 0.8 / max(len(methods), 1)
    colours = [*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors]  # 18 distinct colours
    for axis, protocol in zip(axes[:, 0], protocols, strict=True):
        scored = {row["method"]: row for row in rows if row["protocol"] == protocol}
        for i, method in enumerate(methods):
            if method not in scored:
                continue
            values = [scored[method][metric] or 0.0 for metric in PLOTTED]
            spreads = [scored[method].get(metric + STD) or 0.0 for metric in PLOTTED]  # 0 for one seed
            positions = [m + (i - (len(methods) - 1) / 2) * width for m in range(len(PLOTTED))]
            axis.bar(positions, values, width, yerr=spreads, label=method, color=colours[i % len(colours)])
        axis.set_xticks(range(len(PLOTTED)), [names.DISPLAY_NAMES[m] for m in PLOTTED])
        axis.set_ylim(0, 100)
        axis.set_ylabel("score (×100)")
        axis.set_title(protocol)
    axes[0, 0].legend(ncol=min(len(methods), 5), fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.12))
    return save_figure(figure, path)


def sweep_lines(rows: list[dict[str, Any]], sweep: Sweep, protocol: str, path: Path) -> Path:
    """Each metric against the swept setting (one line per metric); methods outside the sweep are dashed
    horizontal references in the same colour."""
    scored = {row["method"]: row for row in rows if row["protocol"] == protocol}
    swept = sorted((value, method) for method, value in sweep.values.items() if method in scored)
    references = [method for method in scored if method not in sweep.values]
    figure, axis = plt.subplots(figsize=(8, 4.5))
    colours = plt.get_cmap("tab10").colors
    styles = ("--", ":", "-.")
    for i, metric in enumerate(PLOTTED):
        colour = colours[i % len(colours)]
        xs = [value for value, _ in swept]
        axis.plot(
            xs,
            [scored[m][metric] or 0.0 for _, m in swept],
            "o-",
            color=colour,
            label=names.DISPLAY_NAMES[metric],
        )
        for j, method in enumerate(references):
            axis.axhline(scored[method][metric] or 0.0, color=colour, linestyle=styles[j % len(styles)], lw=1)
    if swept and max(v for v, _ in swept) / max(min(v for v, _ in swept), 1e-9) >= 8:
        axis.set_xscale("log", base=2)
        axis.set_xticks([value for value, _ in swept], [f"{value:g}" for value, _ in swept])
    axis.set_xlabel(sweep.label + (f"  (dashed: {', '.join(references)})" if references else ""))
    axis.set_ylabel("score (×100)")
    axis.set_ylim(0, 100)
    axis.set_title(protocol)
    axis.legend(fontsize=8, ncol=4, loc="lower left", bbox_to_anchor=(0, 1.08))
    return save_figure(figure, path)


def _pca(points: torch.Tensor) -> torch.Tensor:
    """The first two principal coordinates of (count, dim) points."""
    centred = points - points.mean(0)
    _, _, components = torch.linalg.svd(centred, full_matrices=False)  # exact: the figure is reproducible
    return centred @ components[:2].T


def _question_group(question: str) -> str:
    return " ".join(question.lower().split()[:2])


def load_spaces(
    model_args: dict[str, Any], data_root: str, checkpoint: str | Path
) -> tuple[Any, DisentangledEncoders]:
    """The knowledge memory of an editing config's model settings (its sources inside `data_root`) and
    the trained encoders."""
    backbone = BackboneConfig(**model_args["backbone"])
    memory_args = dict(model_args["memory"])
    if memory_args.get("sources") is not None:
        memory_args["sources"] = [MemorySource(**source) for source in memory_args["sources"]]
    memory = load_memory(backbone, MemoryConfig(**memory_args).under(data_root))
    state = read_torch_file(checkpoint, "a DisentangleModule checkpoint", map_location="cpu")
    dim = state["hyper_parameters"]["encoder_dim"]
    encoders = DisentangledEncoders(memory.layers, memory.hidden_size, dim)
    prefix = "encoders."
    encoders.load_state_dict(
        {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    )
    return memory, encoders.eval()


@torch.no_grad()
def space_projection(memory: Any, encoders: DisentangledEncoders, path: Path, sample: int = 600) -> Path:
    """Raw states, the truthfulness space and the semantic space of the last edited layer, in 2-D (PCA)."""
    layer = memory.layers[-1]
    rows = torch.randperm(len(memory), generator=torch.Generator().manual_seed(0))[:sample]
    pos, neg = memory.states[layer]["pos"][rows].float(), memory.states[layer]["neg"][rows].float()
    raw = _pca(torch.cat([pos, neg]))
    truth = _pca(torch.cat([encoders.encode_truth(layer, pos), encoders.encode_truth(layer, neg)]))
    groups = [_question_group(memory.triplets[i].question) for i in rows.tolist()]
    common = [group for group, _ in Counter(groups).most_common(8)]
    semantic = _pca(encoders.encode_semantic(layer, pos))
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    count = len(rows)
    for axis, points, title in ((axes[0], raw, "hidden states"), (axes[1], truth, "truthfulness space")):
        axis.scatter(*points[:count].T, s=5, alpha=0.6, label="A_pos (truth)", color="tab:green")
        axis.scatter(*points[count:].T, s=5, alpha=0.6, label="A_neg (hallucination)", color="tab:red")
        axis.set_title(f"{title}, layer {layer}")
        axis.legend(fontsize=8)
    colours = plt.get_cmap("tab10")
    for i, group in enumerate(common):
        members = [j for j, g in enumerate(groups) if g == group]
        axes[2].scatter(*semantic[members].T, s=5, alpha=0.7, label=f'"{group} …"', color=colours(i))
    axes[2].set_title(f"semantic space of A_pos by question, layer {layer}")
    axes[2].legend(fontsize=7, markerscale=2)
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    return save_figure(figure, path)
