"""The comparison's figures: a CI error bar on every point, and tick labels whose boxes never intersect."""
import io

import numpy as np

from selectune.compare.plots import comparison_figures, finish_layout, plot_comparison


def crowded(n: int = 12) -> list[dict]:
    """Many methods with long names, near-equal scores, trainable counts inside one decade and large times."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        mean = 0.40 + 0.002 * i
        rows.append({"method": f"bitfit:roles=query+mlp_in+attn_out,include_key_bias=true,variant={i}", "kind": "peft" if i % 3 == 0 else "selective",
                     "trainable_parameters": int(20_000 + 6_000 * i), "train_seconds": float(100_000 + 900 * i),
                     "test": {"macro_f1": {"mean": mean, "sd": 0.01, "ci_low": mean - 0.03 - 0.001 * i, "ci_high": mean + 0.02}},
                     "peak_memory_mb": float(rng.uniform(100, 900)), "median_step_seconds": float(rng.uniform(0.1, 2))})
    return rows


def visible_boxes(labels, renderer):
    return [t.get_window_extent(renderer) for t in labels if t.get_visible() and t.get_text()]


def test_tick_labels_never_overlap_and_every_point_has_its_ci():
    summaries = crowded()
    figures = comparison_figures(summaries, "macro_f1", "a long title for drug reviews", floor=0.2)
    raw = figures["accuracy_vs_parameters.png"]
    raw.tight_layout()
    raw.canvas.draw()
    renderer = raw.canvas.get_renderer()
    before = visible_boxes(raw.axes[0].get_xticklabels(which="both"), renderer)
    # Without the untangling these minor log-scale labels collide (so the check below can fail).
    assert any(a.overlaps(b) for i, a in enumerate(before) for b in before[i + 1:])
    for name, fig in figures.items():
        finish_layout(fig)
        fig.savefig(io.BytesIO(), format="png", dpi=120)  # as saved: render at the file's dpi
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            for labels in (ax.get_xticklabels(which="both"), ax.get_yticklabels(which="both")):
                boxes = visible_boxes(labels, renderer)
                assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), name
            if name != "memory.png":
                assert len(visible_boxes(ax.get_xticklabels(), renderer)) >= 2  # still readable: labels remain
    # The bar chart names every method: its height grows with the wrapped names, none is left out.
    bars = figures["memory.png"].axes[0]
    assert len(visible_boxes(bars.get_yticklabels(), renderer)) == len(summaries)
    # Error bars: each point's vertical bar spans its CI, not ± sd.
    ax = figures["accuracy_vs_time.png"].axes[0]
    spans = sorted((round(float(seg[0][1]), 6), round(float(seg[1][1]), 6))
                   for coll in ax.collections for seg in coll.get_segments() if len(seg) == 2 and seg[0][0] == seg[1][0])
    expected = sorted((round(s["test"]["macro_f1"]["ci_low"], 6), round(s["test"]["macro_f1"]["ci_high"], 6)) for s in summaries)
    assert spans == expected


def test_plot_comparison_writes_the_three_files(tmp_path):
    paths = plot_comparison(crowded(3), "macro_f1", tmp_path, "t")
    assert [p.name for p in paths] == ["accuracy_vs_parameters.png", "accuracy_vs_time.png", "memory.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
