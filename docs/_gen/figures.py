"""The concept figures of the documentation, drawn at build time from the package itself.

``python docs/_gen/figures.py OUTDIR`` writes them as SVG files; the mkdocs hook calls
:func:`all_figures` and serves them as generated files (nothing binary is committed).
The activation figure evaluates the node classes of :mod:`pyrocg.nodes`, so it shows what the
code computes, not a drawing of it.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

__all__ = ["all_figures", "chain_graph", "activations"]

plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "pyrocg", "font.size": 10})


def _svg(fig) -> bytes:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return buf.getvalue().encode()


def chain_graph() -> bytes:
    """A layered chain graph: directed edges between layers, a dropout node on one layer,
    and undirected (CRF) edges inside the output layer."""
    fig, ax = plt.subplots(figsize=(8.5, 3.6))
    layers = [("$X^0$ (input)", 4), ("$X^1$", 5), ("$X^2$", 5), ("$Y$ (CRF output)", 4)]
    xs = [0.0, 2.6, 5.2, 7.8]
    pos = []
    for (name, n), x in zip(layers, xs, strict=True):
        ys = [(n - 1) / 2 - i for i in range(n)]
        pos.append([(x, y) for y in ys])
        ax.text(x, max(ys) + 0.9, name, ha="center", fontsize=11)
    for a, b in zip(pos[:-1], pos[1:], strict=True):
        for p in a:
            for q in b:
                ax.annotate("", q, p, arrowprops=dict(arrowstyle="-|>", color="0.65", lw=0.6,
                                                      shrinkA=9, shrinkB=9, mutation_scale=7))
    for p, q in zip(pos[3][:-1], pos[3][1:], strict=True):  # intra-layer chain: undirected
        ax.plot([p[0] + 0.05, q[0] + 0.05], [p[1], q[1]], color="tab:red", lw=2.2, zorder=1)
    colours = ["0.85", "tab:blue", "tab:blue", "tab:red"]
    for layer, colour in zip(pos, colours, strict=True):
        for x, y in layer:
            ax.scatter([x], [y], s=340, color=colour, edgecolor="k", zorder=3)
    # A dropout node D multiplies X^1's statistics on their way to X^2.
    dx, dy = 3.9, -3.1
    ax.scatter([dx], [dy], s=300, marker="s", color="gold", edgecolor="k", zorder=3)
    ax.text(dx + 0.3, dy, "$D_j$ ~ Bernoulli  (dropout node)", va="center", fontsize=9)
    ax.annotate("", (3.9, -1.1), (dx, dy + 0.2), arrowprops=dict(arrowstyle="-|>", color="goldenrod",
                                                                  lw=1.2, ls="--"))
    ax.text(3.9, 4.2, "$P(X^l \\mid X^{l-1}) = \\prod_i P(X^l_i \\mid X^{l-1})$", ha="center",
            fontsize=11)
    ax.text(7.8, -2.55, "pairwise $\\psi(y_c, y_{c'})$", ha="center", color="tab:red", fontsize=9)
    ax.set_xlim(-0.8, 9.0)
    ax.set_ylim(-3.6, 4.6)
    ax.axis("off")
    return _svg(fig)


def activations() -> bytes:
    """Each node family's exact mean against the activation of its feed-forward pass, and
    the gap between them with the documented bounds."""
    from pyrocg import nodes

    e = torch.linspace(-4, 4, 801, dtype=torch.float64)
    rows = [
        ("binary {0,1}", nodes.BinaryNode(e, 0.0, 1.0), "sigmoid", None),
        ("binary {-1,1}", nodes.BinaryNode(e, -1.0, 1.0), "tanh", None),
        ("rectified, s=|tanh e|", nodes.ReLUNode(e), "relu", 0.0371),
        ("rectified, s=1.776", nodes.SoftplusNode(e), "softplus", 0.0154),
    ]
    # Categorical: P(class 0) as the energy of class 0 varies, two others at 0 and 1.
    energy3 = torch.stack([e, torch.zeros_like(e), torch.ones_like(e)], -1)
    cat = nodes.CategoricalNode(energy3)
    fig, axes = plt.subplots(2, 5, figsize=(14, 5.2), sharex=True,
                             gridspec_kw={"height_ratios": [2, 1]})
    panels = [(name, node.mean, node.feedforward, act, bound) for name, node, act, bound in rows]
    panels.append(("categorical (K=3)", cat.mean[:, 0], cat.feedforward[:, 0], "softmax$_0$", None))
    for (name, mean, ff, act, bound), top, bottom in zip(panels, axes[0], axes[1], strict=True):
        top.plot(e, ff, color="tab:orange", lw=3, alpha=0.6, label=f"{act}(e) (feed-forward)")
        top.plot(e, mean, color="k", lw=1.2, ls="--", label="exact mean E[X]")
        top.set_title(name)
        top.legend(fontsize=8, loc="upper left")
        gap = (mean - ff).abs()
        bottom.plot(e, gap, color="tab:purple")
        if bound is not None:
            bottom.axhline(bound, color="tab:red", ls=":", label=f"bound {bound}")
            bottom.legend(fontsize=8)
        else:
            bottom.set_ylim(-0.001, 0.01)
        bottom.set_xlabel("energy e")
    axes[1][0].set_ylabel("|E[X] - activation|")
    axes[0][0].set_ylabel("statistic")
    fig.tight_layout()
    return _svg(fig)


def all_figures() -> dict[str, bytes]:
    """``{file name: SVG bytes}`` of every concept figure."""
    return {"chain_graph.svg": chain_graph(), "activations.svg": activations()}


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    for name, data in all_figures().items():
        (out / name).write_bytes(data)
        print(out / name)
