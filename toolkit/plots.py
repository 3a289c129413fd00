"""Figures drawn without a display and handed back as PNG bytes (report.md's files) or SVG text (inlined in
report.html), for every report ptk writes."""

from __future__ import annotations

import io


def new_figure(figsize: tuple[float, float] = (6.5, 4)):
    """``(figure, axes)`` drawn with matplotlib's Agg backend: no display needed, on a server or in CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def png_bytes(fig) -> bytes:
    """A finished matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def svg_text(fig) -> str:
    """A finished matplotlib figure as one ``<svg>`` element (the figure is closed), to inline in an HTML page:
    no XML declaration or DOCTYPE before it, text kept as text (searchable, sharp at any zoom), and a fixed
    hash salt, so the same figure gives the same SVG (matplotlib otherwise draws random ids for clip paths)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "ptk"}):
        fig.savefig(buf, format="svg")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]
