"""``mrfengine dictionary``: build, cache and inspect per-slot dictionaries."""

from __future__ import annotations

import click

from ._common import cache_option, no_cache_option, nthreads_option, progress, progress_option, sequence_option
from ._outputs import force_option


@click.group()
def dictionary() -> None:
    """Build, cache and inspect the per-slot dictionaries of a sequence.

    The default grid is the paper's: T1 300-3500 ms and T2* 10-2500 ms in 5%
    geometric steps, B1 0.6-1.4 by 0.1, atoms with T2* > T1 dropped.
    """


def _slots(spec: str | None, n_slots: int) -> list[int]:
    if spec is None or spec == "all":
        return list(range(n_slots))
    try:
        slots = sorted({int(s) for s in spec.split(",")})
    except ValueError:
        raise click.BadParameter(f"expected 'all' or comma-separated integers; got {spec!r}", param_hint="--slots")
    bad = [s for s in slots if not 0 <= s < n_slots]
    if bad:
        raise click.BadParameter(f"slots {bad} out of range [0, {n_slots})", param_hint="--slots")
    return slots


def _grid(step: float, t1: tuple[float, float], t2: tuple[float, float], b1: tuple[float, float, float]):
    from ..dictionary import ParameterGrid

    return ParameterGrid.geometric(t1, t2, step, b1)


grid_options = [
    click.option("--step", default=0.05, show_default=True, type=float, help="Relative step of the T1/T2* grids."),
    click.option("--t1", nargs=2, type=float, default=(300.0, 3500.0), show_default=True, help="T1 range (ms)."),
    click.option("--t2star", nargs=2, type=float, default=(10.0, 2500.0), show_default=True, help="T2* range (ms)."),
    click.option("--b1", nargs=3, type=float, default=(0.6, 1.4, 0.1), show_default=True,
                 help="B1 range: start stop step."),
]


def with_grid(f):
    for opt in reversed(grid_options):
        f = opt(f)
    return f


@dictionary.command()
@sequence_option
@click.option("--slots", default=None, help="'all' (default) or comma-separated slots (0-based).")
@with_grid
@click.option("-o", "--output-dir", "output", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Also write each slot's dictionary to DIR/slot-NNN.npz.")
@click.option("--output", "output_alias", type=click.Path(file_okay=False), default=None, hidden=True,
              help="Deprecated name of --output-dir.")
@force_option
@nthreads_option()
@cache_option
@no_cache_option
@progress_option
def build(sequence_spec, slots, step, t1, t2star, b1, output, output_alias, force, n_threads, cache_dir, no_cache,
          show_progress) -> None:
    """Simulate (or load from the cache) the dictionaries of SLOTS; with
    -o/--output-dir, also write them as DIR/slot-NNN.npz (existing files are
    not replaced unless --force)."""
    import time
    from pathlib import Path

    from ..dictionary import SliceDictionaries
    from ..sequence import resolve_sequence
    from ._common import make_cache

    if output_alias is not None:
        click.echo("warning: dictionary build --output DIR is deprecated; use -o/--output-dir DIR", err=True)
        if output is not None:
            raise click.UsageError("give -o/--output-dir only (--output is its deprecated name)")
        output = output_alias
    seq = resolve_sequence(sequence_spec)
    dicts = SliceDictionaries(seq, _grid(step, t1, t2star, b1), cache=make_cache(cache_dir, no_cache))
    chosen = _slots(slots, seq.n_slots)
    if output:
        from ..io.outputs import check_outputs

        check_outputs(output, [f"slot-{slot:03d}.npz" for slot in chosen], force=force)
    t0 = time.perf_counter()
    for slot in progress(chosen, desc="dictionaries", enabled=show_progress):
        d = dicts[slot]
        if output:
            Path(output).mkdir(parents=True, exist_ok=True)
            d.save(Path(output) / f"slot-{slot:03d}.npz")
    where = dicts.cache.root if dicts.cache else "not cached"
    click.echo(f"{len(chosen)} dictionaries of {d.n_atoms} atoms x {d.n_frames} frames for {seq.name} "
               f"in {time.perf_counter() - t0:.2f} s (cache: {where})")


@dictionary.command()
@sequence_option
@click.option("--slot", default=0, show_default=True, type=int, help="Slot to inspect (0-based).")
@with_grid
@cache_option
@no_cache_option
def inspect(sequence_spec, slot, step, t1, t2star, b1, cache_dir, no_cache) -> None:
    """Describe one slot's dictionary: size, grid, timing and SVD energy."""
    import numpy as np

    from ..dictionary import DictionaryCache, SliceDictionaries
    from ..sequence import resolve_sequence
    from ._common import make_cache

    seq = resolve_sequence(sequence_spec)
    if not 0 <= slot < seq.n_slots:
        raise click.BadParameter(f"slot must lie in [0, {seq.n_slots})", param_hint="--slot")
    grid = _grid(step, t1, t2star, b1)
    dicts = SliceDictionaries(seq, grid, cache=make_cache(cache_dir, no_cache))
    d = dicts[slot]
    n_b1, n_t1, n_t2 = grid.shape
    click.echo(f"sequence      {seq.name}: {seq.n_measurements} measurements, {seq.n_slices} slices, "
               f"SMS {seq.sms_factor}, {seq.n_slots} slots")
    click.echo(f"slot {slot}        slices {list(seq.slices_of_slot(slot))}")
    inv = [(i + 1, s) for i, s in enumerate(seq.inversion_slot) if s is not None]
    click.echo(f"inversions    {len(inv)} (measurement, slot): {inv}")
    click.echo(f"grid          T1 {n_t1} values {grid.t1_ms[0]:.0f}-{grid.t1_ms[-1]:.0f} ms, "
               f"T2* {n_t2} values {grid.t2star_ms[0]:.1f}-{grid.t2star_ms[-1]:.0f} ms, B1 {n_b1} values "
               f"{grid.b1[0]:.2f}-{grid.b1[-1]:.2f}")
    click.echo(f"atoms         {d.n_atoms} x {d.n_frames} frames, {d.atoms.nbytes / 2**20:.1f} MiB {d.dtype}")
    if dicts.cache is not None:
        key = DictionaryCache.key(seq, slot, grid, d.dtype)
        click.echo(f"cache entry   {dicts.cache.path(key)}")
    sv = d.compress(d.n_frames).singular_values
    energy = np.cumsum(sv**2) / np.sum(sv**2)
    ranks = [r for r in (1, 2, 3, 5, 8, 10, 15, 20) if r <= d.n_frames]
    click.echo("SVD energy    " + ", ".join(f"rank {r}: {1 - energy[r - 1]:.1e} lost" for r in ranks))


@dictionary.command(name="clear-cache")
@cache_option
def clear_cache(cache_dir) -> None:
    """Delete the cached dictionaries: only the cache's own entries
    (<key>.npz), only in a folder that carries mrfengine's CACHEDIR.TAG;
    the folder itself only when it is then empty and the cache made it."""
    from ..dictionary import DictionaryCache

    cache = DictionaryCache(cache_dir)
    root = cache.root
    if not root.exists():
        click.echo(f"no cache at {root}")
        return
    n, left, removed = cache.clear()
    click.echo(f"removed {n} cached dictionaries from {root}" + (" and the folder" if removed else ""))
    if left:
        click.echo(f"warning: left {len(left)} file(s) in {root} that are not cache entries: "
                   f"{', '.join(left[:5])}{', ...' if len(left) > 5 else ''}", err=True)


commands = [dictionary]
