"""Pictures of a store for notebooks: summary tables, filmstrips, action plots, windows.

Everything here returns a matplotlib ``Figure`` (or HTML text) and is wired into the objects a
notebook shows: a :class:`~vladata.dataset.Dataset` renders as a summary table, an
:class:`EpisodeView` (what ``ds.episode(i)`` returns) as filmstrips of each camera above plots of
actions and states over time with the language segments marked. matplotlib is imported lazily
(``pip install vlakit[notebook]``), so the data path never pays for it.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from vladata.store.layout import ACTION_TOKENS, IMAGE_PREFIX


def _plt():
    try:
        import matplotlib
        if matplotlib.get_backend().lower().startswith("qt"):
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError("plots need matplotlib: pip install 'vlakit[notebook]'") from e
    return plt


def figure_png(fig, dpi: int = 80) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _img_tag(png: bytes) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}"/>'


# -- the dataset summary ------------------------------------------------------------------------

def summary_html(ds) -> str:
    """An HTML summary: counts, splits, features and per-dimension statistics of actions."""
    s = ds.summary()
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(k)}</td><td>{e(f['dtype'])}</td><td>{e(str(tuple(f['shape'])))}</td>"
        f"<td>{e(f['kind'])}</td><td>{e(f['codec'])}</td></tr>" for k, f in s["features"].items())
    splits = ", ".join(f"{e(k)}: {v['episodes']} episodes / {v['frames']:,} frames"
                       for k, v in s["splits"].items())
    parts = [f"<b>vlakit store</b> <code>{e(s['path'])}</code> (source {e(s['source'])}, "
             f"{s['fps']:g} fps)<br>{s['frames']:,} frames, {s['episodes']:,} episodes, "
             f"{s['segments']:,} language segments<br>splits: {splits}",
             "<table><tr><th>feature</th><th>dtype</th><th>shape</th><th>kind</th>"
             f"<th>codec</th></tr>{rows}</table>"]
    try:
        stats = ds.stats
    except Exception:  # noqa: BLE001 - a summary shows what it can
        stats = {}
    if "action" in stats:
        st = stats["action"]
        names = ds.features["action"].names or [str(i) for i in range(len(st["min"]))]
        keys = [k for k in ("min", "q01", "mean", "q99", "max", "std") if k in st]
        head = "".join(f"<th>{k}</th>" for k in keys)
        body = "".join("<tr><td>" + e(n) + "</td>" + "".join(
            f"<td>{float(st[k][d]):.4g}</td>" for k in keys) + "</tr>" for d, n in enumerate(names))
        parts.append(f"<b>action statistics</b> (split {e(str(s['stats_split']))})"
                     f"<table><tr><th>dim</th>{head}</tr>{body}</table>")
    return "<div>" + "".join(parts) + "</div>"


# -- episodes -----------------------------------------------------------------------------------

def filmstrip(ax, frames: np.ndarray, n: int = 8, title: str = "") -> None:
    """Draw ``n`` evenly spaced frames of (T, H, W, C) side by side on ``ax``."""
    idx = np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int)
    strip = np.concatenate([frames[i][..., :3] for i in idx], axis=1)
    ax.imshow(strip)
    w = frames.shape[2]
    ax.set_xticks([w * (j + 0.5) for j in range(len(idx))], [str(i) for i in idx], fontsize=7)
    ax.set_yticks([])
    ax.set_title(title, fontsize=9, loc="left")


def plot_episode(frames: dict[str, np.ndarray], *, names: dict | None = None,
                 segments: list[tuple[int, int, str]] = (), title: str = "", n_frames: int = 8):
    """Filmstrips of each camera, then every low-dim feature over time with segments shaded."""
    plt = _plt()
    cams = [k for k, v in frames.items() if v.ndim == 4 and v.dtype == np.uint8]
    series = [k for k, v in frames.items() if v.ndim == 2 and k not in (ACTION_TOKENS,)]
    fig, axes = plt.subplots(len(cams) + len(series), 1, squeeze=False,
                             figsize=(10, 1.6 * len(cams) + 2.0 * len(series)))
    axes = axes[:, 0]
    for ax, cam in zip(axes, cams):
        filmstrip(ax, frames[cam], n_frames, cam)
    colours = plt.get_cmap("tab20").colors
    for ax, key in zip(axes[len(cams):], series):
        x = frames[key]
        labels = (names or {}).get(key) or [str(d) for d in range(x.shape[1])]
        for d in range(x.shape[1]):
            ax.plot(x[:, d], lw=1, color=colours[d % len(colours)], label=labels[d])
        for j, (a, b, text) in enumerate(segments):
            ax.axvspan(a, b, color="0.85" if j % 2 else "0.92", zorder=0)
            if key == series[0]:  # inside the axes, staggered: clear of the titles above
                ax.text(a, 0.96 - 0.12 * (j % 3), text[:28], transform=ax.get_xaxis_transform(),
                        fontsize=6, va="top", clip_on=True,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                              "alpha": 0.7})
        ax.set_title(key, fontsize=9, loc="left")
        ax.set_xlim(0, len(x) - 1)
        if x.shape[1] <= 16:
            ax.legend(fontsize=6, ncol=1 + x.shape[1] // 9, loc="upper left",
                      bbox_to_anchor=(1.005, 1.0), borderaxespad=0)  # beside the plot, not on it
    axes[-1].set_xlabel("frame")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


class EpisodeView(dict):
    """``ds.episode(i)``: a plain ``{feature: array}`` dict that a notebook shows as pictures."""

    def __init__(self, frames: dict, *, ds=None, index: int | None = None):
        super().__init__(frames)
        self._ds, self.index = ds, index

    def plot(self, n_frames: int = 8):
        segments, names, title = [], {}, f"episode {self.index}"
        if self._ds is not None:
            seg = self._ds.segments.filter(self._ds.segments["episode_index"] == self.index)
            segments = [(r["start"], r["end"], r["instruction"]) for r in seg.iter_rows(named=True)]
            names = {k: list(f.names) for k, f in self._ds.features.items() if f.names}
            row = self._ds.episodes.row(self.index, named=True)
            title = f"episode {self.index} ({row['split']}, {row['source_id']}, {row['length']} frames)"
        return plot_episode(dict(self), names=names, segments=segments, title=title,
                            n_frames=n_frames)

    def _repr_html_(self) -> str:
        return _img_tag(figure_png(self.plot()))


# -- distributions and windows --------------------------------------------------------------------

def plot_distribution(ds, feature: str = "action", bins: int = 80):
    """A histogram of every dimension of ``feature`` with its q01/q99 marked."""
    plt = _plt()
    x = np.asarray(ds.array(feature)[:], np.float32).reshape(ds.num_frames, -1)
    st = ds.stats.get(feature, {})
    names = ds.features[feature].names or [str(d) for d in range(x.shape[1])]
    cols = min(4, x.shape[1])
    rows = -(-x.shape[1] // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.2 * rows), squeeze=False)
    for d, ax in enumerate(axes.ravel()):
        if d >= x.shape[1]:
            ax.axis("off")
            continue
        ax.hist(x[:, d], bins=bins, color="0.4")
        for key, colour in (("q01", "tab:red"), ("q99", "tab:red"), ("mean", "tab:blue")):
            if key in st:
                ax.axvline(float(st[key][d]), color=colour, lw=1, ls="--", label=key)
        ax.set_title(names[d], fontsize=9)
        ax.tick_params(labelsize=7)
    axes.ravel()[0].legend(fontsize=6)
    fig.suptitle(f"{feature}: distribution per dimension (dashed: q01/q99 in red, mean in blue)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_window(sample: dict, n_frames: int = 8):
    """A training window: its frames (masked history greyed out) and its action chunks + mask."""
    plt = _plt()
    cams = [k for k, v in sample.items() if k.startswith(IMAGE_PREFIX)]
    obs_mask = np.asarray(sample.get("obs_mask", np.ones(len(sample[cams[0]]), bool)))
    act = np.asarray(sample["action"])            # (h, c, A)
    amask = np.asarray(sample["action_mask"])     # (h, c)
    fig, axes = plt.subplots(len(cams) + 2, 1, figsize=(10, 1.6 * len(cams) + 4.5), squeeze=False)
    axes = axes[:, 0]
    for ax, cam in zip(axes, cams):
        frames = np.asarray(sample[cam]).copy()
        frames[~obs_mask] = frames[~obs_mask] // 3
        filmstrip(ax, frames, n_frames, f"{cam} (dark = obs_mask false)")
    h, c, a = act.shape
    axes[-2].imshow(act.transpose(2, 0, 1).reshape(a, h * c), aspect="auto", cmap="coolwarm",
                    vmin=-1, vmax=1)
    axes[-2].set_title("action chunks: rows = dims, columns = (step, chunk offset)", fontsize=9,
                       loc="left")
    axes[-1].imshow(amask, aspect="auto", cmap="Greys", vmin=0, vmax=1)
    axes[-1].set_title("action_mask (step x chunk offset; white = masked out)", fontsize=9,
                       loc="left")
    axes[-1].set_xlabel("chunk offset")
    axes[-1].set_ylabel("step")
    text = sample.get("instruction", "")
    fig.suptitle(f"window: {text}" if text else "window", fontsize=10)
    fig.tight_layout()
    return fig
