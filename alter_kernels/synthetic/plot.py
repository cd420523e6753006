"""Model utility against forget quality (log x), like the paper's Fig. 4.

PNG through matplotlib when it is installed; otherwise an SVG written by hand (no dependency).
"""
from __future__ import annotations

import math


# where a label may go, relative to its point (points; horizontal / vertical alignment), in order
# of preference: the first that overlaps no other label, no point and stays inside the axes
_OFFSETS = [(5, 4, "left", "bottom"), (5, -4, "left", "top"), (-5, 4, "right", "bottom"),
            (-5, -4, "right", "top"), (0, 7, "center", "bottom"), (0, -7, "center", "top"),
            (12, 12, "left", "bottom"), (12, -12, "left", "top"), (-12, 12, "right", "bottom"),
            (-12, -12, "right", "top"), (0, 16, "center", "bottom"), (0, -16, "center", "top")]


def place_labels(fig, ax, pts) -> list:
    """Annotate every (name, x, y) of ``pts`` at the first offset of _OFFSETS where its text
    overlaps no label placed before, no marker and stays inside the axes (else the first offset).
    Returns the labels' display-space boxes, in the order of ``pts``."""
    fig.canvas.draw()                                    # fixes the limits and the transforms
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    marks = [ax.transData.transform((x, y)) for _, x, y in pts]
    boxes = []
    for i, (name, x, y) in enumerate(pts):
        chosen = None
        for dx, dy, ha, va in _OFFSETS:
            t = ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=8)
            bb = t.get_window_extent(renderer).expanded(1.06, 1.15)
            clear = (inside.contains(bb.x0, bb.y0) and inside.contains(bb.x1, bb.y1)
                     and not any(bb.overlaps(b) for b in boxes)
                     and not any(j != i and bb.x0 - 4 <= px <= bb.x1 + 4 and bb.y0 - 4 <= py <= bb.y1 + 4
                                 for j, (px, py) in enumerate(marks)))
            if clear:
                chosen = (t, bb)
                break
            t.remove()
        if chosen is None:                               # nowhere clear: the preferred place
            dx, dy, ha, va = _OFFSETS[0]
            t = ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=8)
            chosen = (t, t.get_window_extent(renderer))
        boxes.append(chosen[1])
    return boxes


def plot_results(methods: dict, out_base: str, title: str = "Model utility vs forget quality",
                 ylabel: str = "model utility") -> str:
    """methods: name -> {"forget_quality", "model_utility"}. Writes ``out_base + ".png"`` (matplotlib)
    or ``out_base + ".svg"`` and returns the path written."""
    pts = [(n, max(float(m["forget_quality"]), 1e-300), float(m["model_utility"])) for n, m in methods.items()
           if m.get("forget_quality") is not None and m.get("model_utility") is not None
           and math.isfinite(float(m["forget_quality"])) and math.isfinite(float(m["model_utility"]))]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        path = out_base + ".svg"
        _svg(pts, path, title)
        return path
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for n, fq, mu in pts:
        ax.scatter([fq], [mu], s=60 if n == "alter" else 36, marker="*" if n == "alter" else "o", zorder=3)
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.08)
    ax.set_xlabel("forget quality (KS p-value, log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    place_labels(fig, ax, pts)
    path = out_base + ".png"
    from ..common.fsio import atomic_write
    atomic_write(path, writer=lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)
    return path


def _svg(pts, path, title):
    W, H, L, R, T, B = 640, 440, 70, 30, 40, 60
    xs = [math.log10(max(fq, 1e-300)) for _, fq, _ in pts] or [0.0]
    lo, hi = math.floor(min(xs + [-3])), max(0, math.ceil(max(xs)))
    ys = [mu for _, _, mu in pts] or [0.0]
    ylo, yhi = min(0.0, min(ys)), max(1.0, max(ys))

    def X(v):
        return L + (v - lo) / max(1e-9, hi - lo) * (W - L - R)

    def Y(v):
        return H - B - (v - ylo) / max(1e-9, yhi - ylo) * (H - T - B)

    el = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
          f'<rect width="{W}" height="{H}" fill="white"/>',
          f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="14">{title}</text>']
    for e in range(lo, hi + 1):
        el.append(f'<line x1="{X(e):.1f}" y1="{T}" x2="{X(e):.1f}" y2="{H - B}" stroke="#ddd"/>')
        el.append(f'<text x="{X(e):.1f}" y="{H - B + 16}" text-anchor="middle">1e{e}</text>')
    for i in range(6):
        v = ylo + (yhi - ylo) * i / 5
        el.append(f'<line x1="{L}" y1="{Y(v):.1f}" x2="{W - R}" y2="{Y(v):.1f}" stroke="#ddd"/>')
        el.append(f'<text x="{L - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    el.append(f'<text x="{W / 2}" y="{H - 15}" text-anchor="middle">forget quality (KS p-value, log scale)</text>')
    el.append(f'<text x="18" y="{H / 2}" text-anchor="middle" transform="rotate(-90 18 {H / 2})">model utility</text>')
    for n, fq, mu in pts:
        x, y = X(math.log10(max(fq, 1e-300))), Y(mu)
        color = "#d62728" if n == "alter" else "#1f77b4"
        el.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{6 if n == "alter" else 4}" fill="{color}"/>')
        el.append(f'<text x="{x + 7:.1f}" y="{y - 5:.1f}">{n}</text>')
    el.append("</svg>")
    from ..common.fsio import atomic_write
    atomic_write(path, "\n".join(el))
