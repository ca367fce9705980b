"""``mrfengine info``: versions and compute backends."""

from __future__ import annotations

import click


@click.command()
def info() -> None:
    """Print versions, the compute backends found, and why others are missing."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__
    from ..backend import backends, cpu_threads
    from ..dictionary import default_cache_dir

    click.echo(f"mrfengine {__version__} on Python {platform.python_version()} ({platform.machine()}), "
               f"{cpu_threads()} CPU threads")
    for pkg in ("numpy", "scipy", "nibabel", "numba", "zarr", "dask", "torch", "triton", "cupy", "nilearn"):
        try:
            v = version(pkg)
        except PackageNotFoundError:
            v = "not installed"
        click.echo(f"  {pkg:<10} {v}")
    click.echo("backends:")
    for b in backends():
        mark = "yes" if b.available else "no "
        click.echo(f"  {b.name:<10} {mark}  {b.detail}")
    try:
        from ..nn import triton_status

        ok, detail = triton_status()
        click.echo(f"  {'triton':<10} {'yes' if ok else 'no ':<3}  fused U-net loss kernel: {detail}")
    except ImportError as exc:  # torch missing
        click.echo(f"  {'triton':<10} no   fused U-net loss kernel needs torch: {exc}")
    click.echo("matching: method 'structured' on numpy, cpp and cupy for separable dictionaries; 'brute' everywhere")
    click.echo(f"dictionary cache: {default_cache_dir() / 'dictionaries'}")


commands = [info]
