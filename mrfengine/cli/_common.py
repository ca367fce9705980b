"""Options and helpers shared by commands."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

import click

T = TypeVar("T")

READ_COHORT = click.Path(dir_okay=True, file_okay=True)
"""A cohort a command only reads: a folder, a ``.zip`` of one, or a store URL (``s3://...``,
fsspec); whether it is a cohort is checked when it is opened (:func:`mrfengine.io.cohort.open_store`)."""

sequence_option = click.option(
    "--sequence",
    "sequence_spec",
    default="hermann2021",
    show_default=True,
    help="A preset (hermann2021, hermann2021-site1, hermann2021-site2) or a sequence file (.json, .toml, .csv).",
)
backend_option = click.option(
    "--backend",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "numpy", "cpp", "numba", "cupy", "numba-cuda"]),
    help="Matching backend; auto picks the fastest available (mrfengine info lists them).",
)
method_option = click.option(
    "--method",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "brute", "structured"]),
    help="brute: score every atom (exact mode); structured: exploit T1/B1 x T2* separability "
    "(same accuracy, several times faster); auto: structured where possible.",
)
cache_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Dictionary cache folder (default: $MRFENGINE_CACHE_DIR or ~/.cache/mrfengine).",
)
no_cache_option = click.option("--no-cache", is_flag=True, help="Do not read or write the dictionary cache.")
progress_option = click.option(
    "--progress/--no-progress", "show_progress", default=None, help="Progress bars (default: on when stderr is a terminal)."
)


def split_subjects(values: Iterable[str], *, every: str) -> list[str]:
    """The subject ids of repeated, comma-separated ``--subjects`` values.

    An option given with no id in it (``--subjects ""``) is a usage error, never
    "all subjects"; ``every`` says what leaving it out does (e.g. "run every subject").
    """
    values = list(values)
    ids = [s.strip() for v in values for s in v.split(",") if s.strip()]
    if values and not ids:
        raise click.BadParameter(f"no subject named in {' '.join(map(repr, values))}; leave --subjects out to "
                                 f"{every}", param_hint="--subjects")
    return ids


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool | None = None) -> Iterator[T]:
    """A tqdm progress bar on stderr, shown on terminals unless disabled."""
    from tqdm import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else not enabled
    return iter(tqdm(iterable, total=total, desc=desc, disable=disable, leave=False, file=sys.stderr))


class SliceProgress:
    """A tqdm progress bar on stderr fed by the library's ``progress(done, total)`` callbacks
    (:func:`mrfengine.pipeline.predict_nifti`, :func:`~mrfengine.pipeline.match_nifti`); shown on
    terminals unless disabled.  A context manager: the bar is closed on exit."""

    def __init__(self, desc: str = "", *, enabled: bool | None = None) -> None:
        self.desc = desc
        self.disable = (not sys.stderr.isatty()) if enabled is None else not enabled
        self._bar = None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, desc=self.desc, disable=self.disable, leave=False, file=sys.stderr)
        self._bar.update(max(0, int(done) - self._bar.n))

    def __enter__(self) -> SliceProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


def make_cache(cache_dir: str | None, no_cache: bool):
    from ..dictionary import DictionaryCache

    if no_cache:
        return False
    return DictionaryCache(cache_dir) if cache_dir else None
