"""Figures drawn without a display and handed back as PNG bytes, for every report ptk writes."""

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
