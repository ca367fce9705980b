"""``mrfengine train``: train a network of Table 1 on a cohort store."""

from __future__ import annotations

import click

from ._common import nthreads_option, progress_option


@click.command()
@click.argument("settings_path", metavar="CONFIG.toml", type=click.Path(dir_okay=False))
@click.option("--resume", is_flag=True, help="Continue the run from OUTPUT_DIR/checkpoint.pt.")
@click.option("--tissue-targets", default=None, metavar="truth|derived:PIPELINE",
              help="Where the NAWM and GM outputs' targets come from: 'truth' (the phantom's truth/WM and "
                   "truth/GM; the default) or 'derived:PIPELINE' (the NAWM/GM probability maps of that pipeline's "
                   "segment stage, made by 'mrfengine batch COHORT --stages denoise,match,segment', as the paper "
                   "took them from SPM).  Overrides the settings file's tissue_targets; recorded in the "
                   "checkpoint and the model card.")
@click.option("--force", is_flag=True,
              help="Start the run over: delete the files of an earlier run in output_dir (checkpoint.pt, model.pt, "
                   "model.card.json, metrics.csv, metrics.png; nothing else) first. Without it an earlier run is "
                   "refused (--resume continues it).")
@nthreads_option("CPU threads of PyTorch; 0: the settings file's threads, else torch's choice.", apply=False)
@progress_option
def train(settings_path, resume, tissue_targets, force, n_threads, show_progress) -> None:
    """Train a U-net (a configuration of Table 1, e.g. MSE-5) on the training
    split of a cohort store, as the settings file says (cohort, network,
    output_dir, epochs, batch_size, learning_rate, patches_per_slice, seed;
    optional patch_size, lesion_oversampling, depth, base_filters, map_source,
    tissue_targets, device, bf16, compile, threads, init_model, trust_model_code).  Settings
    are checked against sane ranges before any work.  init_model (a network
    to start from) is read as weights only; a TorchScript init_model runs
    code stored in the file and is refused unless trust_model_code = true
    (only for models you trust).

    After each epoch: validation metrics (lesion Dice at 33%, T1/T2* relative
    deviation) in metrics.csv and metrics.png, and checkpoint.pt; at the end
    model.pt (weights only) with its card model.card.json.  --resume continues an
    interrupted run from its checkpoint (same settings; epochs may grow).

    The NAWM/GM targets are the cohort's truth by default; --tissue-targets
    derived:PIPELINE trains them on a segment stage's maps instead (every
    training and validation subject must have them; validation then scores
    NAWM/GM against them too)."""
    from dataclasses import replace

    from pathlib import Path

    from ..nn.train import CHECKPOINT_NAME, METRICS_CSV, METRICS_PNG, MODEL_NAME, load_settings
    from ..nn.train import train as run_training
    from ._common import progress, set_threads, usage_error

    if force and resume:
        raise click.UsageError("--force starts the run over, --resume continues it: give one")
    settings = load_settings(settings_path)
    if tissue_targets is not None:
        with usage_error("--tissue-targets"):
            settings = replace(settings, tissue_targets=tissue_targets)
    if n_threads:
        with usage_error("--nthreads"):
            settings = replace(settings, threads=n_threads)
        set_threads(n_threads)
    if force:
        out = Path(settings.output_dir)
        card = Path(MODEL_NAME).with_suffix(".card.json").name
        for name in (CHECKPOINT_NAME, MODEL_NAME, card, METRICS_CSV, METRICS_PNG):
            if (out / name).is_file():
                (out / name).unlink()
                click.echo(f"removed {out / name} (--force)", err=True)

    def bar(iterable, total, desc):
        return progress(iterable, total=total, desc=desc, enabled=show_progress)

    result = run_training(settings, resume=resume, progress=bar)
    last = result.history[-1] if result.history else {}
    summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k != "epoch" and v is not None)
    click.echo(f"trained {settings.network} for {len(result.history)} epochs ({summary})")
    click.echo(f"model: {result.model_path}")


commands = [train]
