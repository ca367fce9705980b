"""Is the U-net's uncertainty informative?  (issue 18's acceptance figures)

Runs a model (default: the shipped ``mrfengine/models/mse5``, at the input
scale its card says) on a simulated paper-grid cohort with
Monte-Carlo dropout (8 passes) and the physics-consistency map, and reports
against the ground truth:

* per output, the Spearman rank correlation between the per-voxel MC-dropout
  standard deviation and the absolute error, inside the brain (and, for T1
  and T2*, in voxels with one tissue's fraction >= 0.9);
* the consistency map's median in voxels with a large T1 error (top 10% of
  relative error) and a small one (bottom 50%).

Usage (simulate first; nothing generated is committed)::

    mrfengine simulate /tmp/unc.zarr --preset paper --subjects 3 --workers 1
    python benchmarks/uncertainty_figures.py /tmp/unc.zarr [--slices 20] [--threads 2]

``--slices N`` runs the N central slices of each subject (the network is 2D
and with input scale "subject" the level is measured over those slices'
brain); 0 runs all.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cohort")
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--subjects", type=int, default=0, help="first N subjects (0: all)")
    parser.add_argument("--model", default=None, help="a model file (default: the packaged one)")
    parser.add_argument("--input-scale", default="card", choices=("card", "subject", "absolute"))
    args = parser.parse_args(argv)

    import torch

    from mrfengine.io import Cohort
    from mrfengine.nn import load_model, run_network
    from mrfengine.nn.consistency import physics_consistency
    from mrfengine.nn.default import default_model_path

    torch.set_num_threads(args.threads)
    model = load_model(args.model or default_model_path())
    outputs = model.card.config.outputs
    cohort = Cohort.open(args.cohort)
    subjects = list(cohort)[: args.subjects or None]
    pooled: dict[str, list] = {"err": {o.name: [] for o in outputs}, "sd": {o.name: [] for o in outputs},
                               "pure": [], "t1_rel": [], "cons": []}
    timing = []
    for sub in subjects:
        nz = sub.shape[0]
        z0, z1 = (0, nz) if not args.slices else (max(0, nz // 2 - args.slices // 2), min(nz, nz // 2 + (args.slices + 1) // 2))
        mrf = np.asarray(sub.mrf[:, z0:z1], dtype=np.float32)  # (C, Z, Y, X)
        brain = np.asarray(sub.brain_mask[z0:z1]) > 0
        t = time.perf_counter()
        result = run_network(mrf, model, channel_axis=0, mc_samples=args.samples, mc_seed=0, mask=brain,
                             input_scale=args.input_scale)
        t_net = time.perf_counter() - t
        t = time.perf_counter()
        cons = physics_consistency(mrf, result.maps["T1"], result.maps["T2star"], sub.sequence, mask=brain,
                                   channel_axis=0, first_slice=z0)
        timing.append({"subject": sub.id, "slices": z1 - z0, "network_mc_s": round(t_net, 1),
                       "consistency_s": round(time.perf_counter() - t, 1)})
        truth = {k: np.asarray(v[z0:z1]) for k, v in sub.truth.items() if k in ("T1", "T2star", "GM", "WM", "CSF",
                                                                                  "lesion", "DGM")}
        fractions = np.stack([truth[k] for k in ("GM", "WM", "CSF", "lesion", "DGM") if k in truth])
        pure = fractions.max(axis=0) >= 0.9
        for o in outputs:
            target = truth[o.target.split("/")[-1]]
            pooled["err"][o.name].append(np.abs(result.maps[o.name] - target)[brain])
            pooled["sd"][o.name].append(result.uncertainty[o.name][brain])
        pooled["pure"].append(pure[brain])
        pooled["t1_rel"].append((np.abs(result.maps["T1"] / np.maximum(truth["T1"], 1e-6) - 1))[brain])
        pooled["cons"].append(cons[brain])
        print(json.dumps(timing[-1]), flush=True)

    pure = np.concatenate(pooled["pure"])
    figures: dict = {"subjects": [s.id for s in subjects], "mc_samples": args.samples, "timing": timing,
                     "voxels": int(pure.size), "spearman_sd_vs_abs_error": {}}
    for o in outputs:
        err, sd = np.concatenate(pooled["err"][o.name]), np.concatenate(pooled["sd"][o.name])
        entry = {"brain": round(_spearman(sd, err), 3)}
        if o.name in ("T1", "T2star"):
            entry["fraction>=0.9"] = round(_spearman(sd[pure], err[pure]), 3)
        figures["spearman_sd_vs_abs_error"][o.name] = entry
    rel, cons = np.concatenate(pooled["t1_rel"]), np.concatenate(pooled["cons"])
    hi, lo = rel >= np.quantile(rel, 0.9), rel <= np.quantile(rel, 0.5)
    figures["consistency_median"] = {"T1_error_top10pct": round(float(np.median(cons[hi])), 5),
                                     "T1_error_bottom50pct": round(float(np.median(cons[lo])), 5),
                                     "T1_rel_error_top10pct_from": round(float(np.quantile(rel, 0.9)), 4),
                                     "brain": round(float(np.median(cons)), 5)}
    figures["spearman_consistency_vs_T1_rel_error"] = round(_spearman(-cons, rel), 3)
    print(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
