"""1. Analytic FIM of a two-layer sigmoid network [Suppl. A].

Every estimator against the closed form of ``tests.analytic``: exact (to float precision); the library
default ``relative`` (its data part ``(values - 1) * fisher_scale * lambda^2`` is the exact Fisher shrunk
by each filter's reliability, docs/robust_fisher.md: close to the closed form, same ranking); the
montecarlo error against the number of label draws (expect ~1/sqrt(n)); the variational (the paper's
fixed prior) error against its SGD epochs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

import hf_task2vec as t2v
from hf_task2vec import plots
from hf_task2vec.fisher import fisher_diagonal
from hf_task2vec.robust import prior_precision
from tests.analytic import analytic_two_layer_sigmoid_fisher  # (the test oracle)

from .agreement import agreement
from .harness import ESTIMATORS, Config, fig_path, spearman


def two_layer_probe(w1: torch.Tensor, w2: torch.Tensor) -> t2v.Probe:
    """``p(y|x) = softmax(w2 sigmoid(w1 x))`` as a probe: backbone Linear+Sigmoid, head Linear (float64)."""
    hidden, inputs = w1.shape
    backbone = nn.Sequential(nn.Linear(inputs, hidden, bias=False), nn.Sigmoid()).double()
    head = nn.Linear(hidden, w2.shape[0], bias=False).double()
    with torch.no_grad():
        backbone[0].weight.copy_(w1)
        head.weight.copy_(w2)
    return t2v.Probe(backbone=backbone, head=head, name="two-layer-sigmoid")


def exp_analytic(cfg: Config, fig_dir: Path, prefix: str) -> dict:
    seed = cfg.seed + 1
    gen = torch.Generator().manual_seed(seed)
    n_in, n_hidden, n_classes = cfg.analytic_dims
    n = cfg.analytic_inputs
    w1 = torch.randn(n_hidden, n_in, generator=gen, dtype=torch.float64)
    w2 = 2.0 * torch.randn(n_classes, n_hidden, generator=gen, dtype=torch.float64)
    x = torch.randn(n, n_in, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        p = torch.softmax(torch.sigmoid(x @ w1.T) @ w2.T, dim=-1)
    # labels drawn from the model itself: then the expected Hessian of the loss is the Fisher,
    # which is what the variational estimator measures
    y = torch.multinomial(p, 1, generator=gen).squeeze(1)
    task = t2v.Task.from_tensors(x, y, name="two-layer-sigmoid")
    closed = analytic_two_layer_sigmoid_fisher(w1, w2, x).mean(1).numpy()  # per filter (row of w1)

    def rel_err(v: np.ndarray) -> float:
        return float(np.linalg.norm(np.asarray(v, np.float64) - closed) / np.linalg.norm(closed))

    def embedder(method: str, **kw) -> t2v.Task2Vec:
        return t2v.Task2Vec(
            two_layer_probe(w1, w2), method=method, fit_head=False, max_samples=None,
            device="cpu", progress=False, seed=kw.pop("seed", seed), **kw,
        )  # fmt: skip

    res: dict = {"seed": seed, "inputs": n, "dims": {"inputs": n_in, "filters": n_hidden, "classes": n_classes}}
    # exact, float64 end to end (fisher_diagonal) and through Task2Vec (values stored as float32)
    batches = [(x[i : i + 256], y[i : i + 256]) for i in range(0, n, 256)]
    exact64 = fisher_diagonal(two_layer_probe(w1, w2), batches, method="exact").values
    exact_emb = embedder("exact").embed(task)
    res["exact_rel_err_float64"] = rel_err(exact64)
    res["exact_max_abs_rel_err_float64"] = float(np.max(np.abs(exact64 - closed) / np.abs(closed)))
    res["exact_rel_err_embedding_float32"] = rel_err(exact_emb.values)
    # relative (the library default): values = x_hat / c + 1 with x_hat = F / lambda^2 shrunk by each
    # filter's reliability and c = fisher_scale (recorded); undo the scaling to compare with F
    rel_emb = embedder("relative").embed(task)
    scale = float(json.loads(rel_emb.meta["method_options"])["fisher_scale"])
    lam2 = prior_precision(two_layer_probe(w1, w2))
    rel_fisher = (rel_emb.values.astype(np.float64) - rel_emb.trivial) * scale * lam2
    res["relative"] = {
        "fisher_scale": scale,
        "spearman_vs_closed_form": spearman(rel_emb.values, closed)[0],
        "rel_err_unscaled": rel_err(rel_fisher),  # (values - 1) * c * lambda^2: the shrinkage's bias
        "max_abs_rel_err_unscaled": float(np.max(np.abs(rel_fisher - closed) / np.abs(closed))),
        "data_norm_over_closed_form": float(rel_emb.data_norm / np.sum(closed / lam2)),
    }
    # montecarlo: error vs label draws per input
    errs = np.zeros((len(cfg.analytic_draws), cfg.analytic_repeats))
    mc_default = None
    for i, draws in enumerate(tqdm(cfg.analytic_draws, desc="analytic montecarlo", leave=False)):
        for r in range(cfg.analytic_repeats):
            e = embedder("montecarlo", n_samples=draws, seed=seed + 100 * r).embed(task)
            errs[i, r] = rel_err(e.values)
            if draws == 1 and r == 0:
                mc_default = e
    mean_err = errs.mean(1)
    slope, intercept = np.polyfit(np.log(cfg.analytic_draws), np.log(mean_err), 1)
    res["montecarlo"] = {
        "draws_per_input": list(cfg.analytic_draws),
        "repeats": cfg.analytic_repeats,
        "rel_err_mean": mean_err.tolist(),
        "rel_err_min": errs.min(1).tolist(),
        "rel_err_max": errs.max(1).tolist(),
        "loglog_slope": float(slope),
        "spearman_vs_closed_form_1_draw": spearman(mc_default.values, closed)[0],
    }
    # variational: the returned values are (beta/2N) Lambda = F + (beta/2N) lambda^2 at the optimum,
    # so compare both the raw values and values minus the trivial (prior) embedding
    var_curve = []
    var_default = None
    for ep in tqdm(cfg.analytic_var_epochs, desc="analytic variational", leave=False):
        e = embedder("variational", variational_epochs=ep).embed(task)
        v = e.values.astype(np.float64)
        t = e.trivial.astype(np.float64)
        var_curve.append(
            {
                "epochs": ep,
                "rel_err_values": rel_err(v),
                "rel_err_values_minus_trivial": rel_err(v - t),
                "spearman_vs_closed_form": spearman(v, closed)[0],
                "trivial_over_mean_fisher": float(t.mean() / closed.mean()),
            }
        )
        if ep == cfg.variational_epochs:
            var_default = e
    if var_default is None:
        var_default = embedder("variational", variational_epochs=cfg.variational_epochs).embed(task)
    res["variational"] = {"epochs_curve": var_curve, "default_epochs": cfg.variational_epochs}
    one = {"relative": rel_emb, "montecarlo": mc_default, "variational": var_default, "exact": exact_emb}
    res["agreement"] = agreement({m: [one[m]] for m in ESTIMATORS})  # one task: values only
    default_row = next((r for r in var_curve if r["epochs"] == cfg.variational_epochs), None)
    res["variational"]["default"] = default_row

    # figure: estimates vs closed form, montecarlo error vs draws, variational error vs epochs
    plt = plots._pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    lim = [closed.min() * 0.8, closed.max() * 1.25]
    ax.plot(lim, lim, "k:", lw=1)
    ax.scatter(closed, exact64, s=40, facecolors="none", edgecolors="k", label="exact (float64)")
    ax.scatter(closed, rel_fisher, s=14, marker="s", label="relative (default), unscaled")
    ax.scatter(closed, mc_default.values, s=14, label="montecarlo, 1 draw")
    ax.scatter(closed, var_default.values - var_default.trivial, s=14, marker="x", label="variational - prior")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("closed-form Fisher per filter")
    ax.set_ylabel("estimate")
    ax.set_title(f"two-layer sigmoid net, {n_hidden} filters, N={n}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    draws = np.asarray(cfg.analytic_draws, np.float64)
    plots.line_plot(
        draws,
        {"montecarlo rel. error": mean_err, "c / sqrt(n)": mean_err[0] / np.sqrt(draws / draws[0])},
        bands={"montecarlo rel. error": (errs.min(1), errs.max(1))},
        styles={"c / sqrt(n)": "k--"},
        logx=True,
        logy=True,
        xlabel="label draws per input n",
        ylabel="||F_mc - F|| / ||F||",
        title=f"montecarlo error vs draws (slope {slope:.2f}; {cfg.analytic_repeats} seeds)",
        ax=axes[1],
    )
    eps = [r["epochs"] for r in var_curve]
    plots.line_plot(
        eps,
        {
            "variational values": [r["rel_err_values"] for r in var_curve],
            "variational - prior": [r["rel_err_values_minus_trivial"] for r in var_curve],
            "montecarlo init (1 draw)": [res["montecarlo"]["rel_err_mean"][0]] * len(eps),
        },
        styles={"montecarlo init (1 draw)": "k:"},
        logx=True,
        xlabel="variational epochs",
        ylabel="relative error vs closed form",
        title="variational estimator vs closed form",
        ax=axes[2],
    )
    res["figure"] = str(plots.save_figure(fig, fig_path(fig_dir, prefix, "analytic_fim")))
    return res
