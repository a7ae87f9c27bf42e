"""The trade-off plot (matplotlib, imported lazily)."""

from __future__ import annotations

from pathlib import Path


def plot_tradeoff(result: dict, path: str | Path, chosen: dict | None = None) -> Path:
    """PNG: bias vs test NDCG@k for the selections, random latents and re-ranking; the right
    panel zooms on the latent-suppression points near the original model (within twice the NDCG
    budget). ``chosen`` (the saved policy's sweep point) is ringed and named on both panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = result["settings"]["top_k"]
    b0, n0 = result["base"]["test"]["bias"], result["base"]["test"]["ndcg"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.4))
    styles = {"association": ("tab:blue", "o"), "greedy": ("tab:purple", "s"), "random": ("tab:red", "x")}
    seeds = result["settings"]["seeds"]
    base_styles = {  # method -> (colour, marker, label); lines start at the original model
        "baseline": ("tab:orange", "D", "baseline suppressed: x - β·b_dec"),
        "random-direction": ("tab:brown", "x", f"random direction, norm β·|b_dec| (mean of {seeds})"),
    }
    zoom_x, zoom_y = [n0], [b0]
    for ax in axes:
        rr = [p for p in result["rerank"] if p["ndcg"] >= 0.6 * n0]
        ax.plot([p["ndcg"] for p in rr], [p["bias"] for p in rr], "-", color="tab:green", marker=".",
                label="re-ranking: score - λ·penalty")
        for method, (color, marker, label) in base_styles.items():
            rows = sorted([r for r in result["rows"] if r["method"] == method], key=lambda r: r["baseline"])
            if not rows:
                continue
            ax.plot([n0] + [r["test"]["ndcg"] for r in rows], [b0] + [r["test"]["bias"] for r in rows], "-",
                    color=color, marker=marker, ms=5, label=label)
            if method == "baseline" and ax is axes[0]:
                for r in rows:
                    ax.annotate(f"β={r['baseline']:g}", (r["test"]["ndcg"], r["test"]["bias"]), fontsize=7,
                                textcoords="offset points", xytext=(4, -9), color=color)
            else:
                ax.errorbar([r["test"]["ndcg"] for r in rows], [r["test"]["bias"] for r in rows],
                            yerr=[r["test"].get("bias_std", 0) for r in rows], fmt="none", ecolor=color, alpha=0.4)
        comb = result.get("combined")
        top = max(result["settings"]["strengths"])
        for method, color, label in (("baseline+greedy", "tab:olive", "baseline {b:g} + greedy latents (strength {s:g})"),
                                     ("random-direction+latents", "tab:gray", "random direction + random latents")):
            rows = sorted([r for r in result["rows"] if r["method"] == method and r["strength"] == top],
                          key=lambda r: r["n"])
            if comb and rows:
                ax.plot([r["test"]["ndcg"] for r in rows], [r["test"]["bias"] for r in rows], "--", color=color,
                        marker="P", ms=5, label=label.format(b=comb["baseline"], s=top))
        strengths = sorted(result["settings"]["strengths"])
        for method, (color, marker) in styles.items():
            for s in strengths:
                rows = sorted([r for r in result["rows"] if r["method"] == method and r["strength"] == s],
                              key=lambda r: r["n"])
                if not rows:
                    continue
                xs = [n0] + [r["test"]["ndcg"] for r in rows]
                ys = [b0] + [r["test"]["bias"] for r in rows]
                zoom_x += xs
                zoom_y += ys
                strongest = s == strengths[-1]
                extra = f" (mean of {result['settings']['seeds']})" if method == "random" else ""
                # one legend entry per method (its strongest line); weaker strengths share one entry
                label = f"{method} latents, strength {s:g}{extra}" if strongest else None
                ax.plot(xs, ys, "-" if strongest else "--", color=color, marker=marker, ms=5,
                        alpha=0.9 if strongest else 0.55, label=label)
                if method == "random":
                    ax.errorbar(xs[1:], ys[1:], yerr=[r["test"].get("bias_std", 0) for r in rows], fmt="none",
                                ecolor=color, alpha=0.4)
                elif ax is axes[1] and strongest:  # latent counts, on the zoom only (no overlap)
                    for r in rows:
                        if r["n"] in (1, 4, 32):
                            ax.annotate(str(r["n"]), (r["test"]["ndcg"], r["test"]["bias"]), fontsize=8,
                                        textcoords="offset points", xytext=(3, 3), color=color)
        ax.plot([n0], [b0], "k*", ms=12, label="original model")
        if chosen is not None:
            cx, cy = chosen["test"]["ndcg"], chosen["test"]["bias"]
            ax.plot([cx], [cy], "o", ms=16, mfc="none", mec="black", mew=1.8,
                    label=f"saved policy ({chosen['method']}, chosen on dev)")
            ax.annotate("saved policy", (cx, cy), fontsize=9, fontweight="bold", textcoords="offset points",
                        xytext=(10, -14))
        if result["bias"] == "popularity":
            t = result["targets"]
            ax.axhline(b0 * (1 - t["min_cut"]), color="k", lw=0.6, ls="--")
            ax.axvline(n0 * (1 - t["max_ndcg_loss"]), color="k", lw=0.6, ls="--")
        else:
            ax.axhline(0.0, color="k", lw=0.6, ls="--")
        ax.set_xlabel(f"test NDCG@{k}  (accuracy falls to the right)")
        ax.grid(alpha=0.3)
    ax0, ax1 = axes
    ax0.set_ylabel(f"test {result['measure']['label']}" + (" (F - M)" if result["bias"] == "gender" else ""))
    if result["bias"] == "popularity":
        t = result["targets"]
        ax0.text(n0 * (1 - t["max_ndcg_loss"]), b0 * (1 - t["min_cut"]), " target: ≥1/3 cut, ≤10% NDCG loss",
                 fontsize=7, va="bottom")
    handles, labels = ax0.get_legend_handles_labels()
    if len(strengths) > 1:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="0.4", ls="--", alpha=0.7))
        labels.append(f"dashed: the same methods at strength {strengths[0]:g}"
                      + (f"–{strengths[-2]:g}" if len(strengths) > 2 else ""))
    fig.legend(handles, labels, fontsize=9, loc="lower center", ncol=3, frameon=False)
    ax0.invert_xaxis()
    # the zoom: latent-suppression points within twice the NDCG budget of the original model (the
    # region a policy can come from), so it is a real zoom and not the main panel again
    budget = 2 * result.get("targets", {}).get("max_ndcg_loss", 0.10)
    near = [(x, y) for x, y in zip(zoom_x, zoom_y) if x >= (1 - budget) * n0] or list(zip(zoom_x, zoom_y))
    if chosen is not None:
        near.append((chosen["test"]["ndcg"], chosen["test"]["bias"]))
    zx, zy = [x for x, _ in near], [y for _, y in near]
    dx = max(1e-4, max(zx) - min(zx)) * 0.15
    dy = max(1e-3, max(zy) - min(zy)) * 0.15
    ax1.set_xlim(max(zx) + dx, min(zx) - dx)
    ax1.set_ylim(min(zy) - dy, max(zy) + dy)
    ax1.set_title(f"zoom: latent suppression within {budget:.0%} NDCG loss (counts = latents suppressed)",
                  fontsize=9)
    src = result.get("source", {})
    sae = f", SAE {src['sae']}" if src.get("sae") else ""
    ax0.set_title(f"{result['bias']} bias vs accuracy — {src.get('model', '?')} / {src.get('dataset', '?')}{sae}",
                  fontsize=10)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
