"""Options and helpers shared by commands."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

import click

from ._outputs import force_option, force_options, prefix_option  # noqa: F401 - shared decorators, one import

T = TypeVar("T")

READ_COHORT = click.Path(dir_okay=True, file_okay=True)
"""A cohort a command only reads: a folder, a ``.zip`` of one, or a store URL (``s3://...``,
fsspec); whether it is a cohort is checked when it is opened (:func:`mrfengine.io.cohort.open_store`)."""

def check_sequence_spec(_ctx, _param, value):
    """A ``--sequence`` that is neither a preset nor an existing file is a usage error (exit 2);
    a file's content is checked when it is read (a bad file: exit 1, naming it)."""
    if value is None:
        return None
    import os

    from ..sequence.io import PRESETS

    if str(value).strip().lower() in PRESETS or os.path.exists(value) or "://" in str(value):
        return value
    raise click.BadParameter(f"{value!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor an existing "
                             "sequence file (.json, .toml, .csv)")


sequence_option = click.option(
    "--sequence",
    "sequence_spec",
    callback=check_sequence_spec,
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


# --------------------------------------------------------------------------- shared option decorators
# One spelling per idea on every command (README, "Command-line conventions"):
#   --subjects SUB[,SUB...]  (repeatable)   the subjects a command works on; leaving it out means all
#   -o/--output-dir DIR                     a folder; a single output file is --output FILE (no -o)
#   --force                                 replace outputs that exist (refused by default, naming the file)
#   --nthreads N                            CPU threads of the compute kernels; 0: all cores
#   -v/-q                                   before or after the command name


def subjects_option(every: str = "use every subject", *, help: str | None = None,
                    aliases: tuple[str, ...] = ()):
    """``--subjects SUB[,SUB...]`` (repeatable), parsed by :func:`split_subjects` into the
    parameter ``subject_ids`` (a list; empty: leave it out, ``every``).

    ``aliases``: old spellings (e.g. ``--subject``), hidden, warned about, merged in.
    """
    text = help or f"Subject(s): sub-07 or 07, repeatable or comma-separated (default: {every})."

    def _parse(ctx, _param, value):
        given = list(value) + list(ctx.meta.pop("mrfengine.subjects_alias", ()))
        return split_subjects(given, every=every)

    def deco(f):
        for old in aliases:
            def _stash(ctx, _param, value, old=old):
                if value:
                    click.echo(f"warning: {old} is deprecated; use --subjects", err=True)
                    if "subject_ids" in ctx.params:  # --subjects was read first: add to it
                        ctx.params["subject_ids"] = ctx.params["subject_ids"] + split_subjects(value, every=every)
                    else:
                        ctx.meta.setdefault("mrfengine.subjects_alias", []).extend(value)

            f = click.option(old, multiple=True, hidden=True, expose_value=False, callback=_stash)(f)
        return click.option("--subjects", "subject_ids", multiple=True, metavar="SUB", callback=_parse, help=text)(f)

    return deco


def set_threads(n_threads: int) -> None:
    """Limit the compute libraries of this process (and of the processes it starts) to ``n_threads``.

    0 leaves them as they are: all cores, or ``OMP_NUM_THREADS`` where it is set.  Otherwise
    OpenMP (the C++ kernels), Numba and PyTorch use ``n_threads``: OpenMP through the
    environment (``OMP_NUM_THREADS``, read when a library loads and by worker processes
    started later) and ``threadpoolctl`` for a library already loaded; Numba and PyTorch
    through their own calls (``numba.set_num_threads``, ``torch.set_num_threads``).
    ``NUMBA_NUM_THREADS`` is left alone: Numba launches its pool once per process with
    that many threads and refuses any other value afterwards, so a second command run
    in the same process (a library caller, a test) would fail.
    """
    import os

    n = int(n_threads)
    if n <= 0:
        return
    from ..backend import cpu_threads

    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    try:
        import numba
    except ImportError:
        pass
    else:
        try:  # at most the pool's size (the cores, or NUMBA_NUM_THREADS where the user set it)
            numba.set_num_threads(max(1, min(n, cpu_threads(), numba.config.NUMBA_NUM_THREADS)))
        except (AttributeError, ValueError):  # an old numba
            pass
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=n, user_api="openmp")


def nthreads_option(help: str | None = None, *, aliases: tuple[str, ...] = (), apply: bool = True, default: int = 0):
    """``--nthreads N`` (``n_threads``, an int >= 0, default ``default``; 0: all cores).

    With ``apply`` the process's libraries are limited to N at once (:func:`set_threads`);
    ``aliases``: old spellings (predict's ``--threads``), hidden, warned about.
    """
    text = help or "CPU threads of the compute kernels (OpenMP, Numba, PyTorch); 0: all cores (or OMP_NUM_THREADS)."

    def _done(ctx, _param, value):
        if value is None:
            value = ctx.meta.pop("mrfengine.nthreads_alias", None)
        if value is None:
            value = default
        if apply:
            set_threads(value)
        return value

    def deco(f):
        for old in aliases:
            def _stash(ctx, _param, value, old=old):
                if value is not None:
                    click.echo(f"warning: {old} is deprecated; use --nthreads", err=True)
                    if ctx.params.get("n_threads"):
                        raise click.UsageError(f"give --nthreads only ({old} is its deprecated name)")
                    if "n_threads" in ctx.params:
                        ctx.params["n_threads"] = value
                        if apply:
                            set_threads(value)
                    else:
                        ctx.meta["mrfengine.nthreads_alias"] = value

            f = click.option(old, type=click.IntRange(0), default=None, hidden=True, expose_value=False,
                             callback=_stash)(f)
        return click.option("--nthreads", "n_threads", type=click.IntRange(0), default=None, metavar="N",
                            callback=_done, help=text + f"  [default: {default}]")(f)

    return deco


def output_file_option(help: str, *, required: bool = True, aliases: tuple[str, ...] = ()):
    """``--output FILE`` (``output``): one output file.  No ``-o``: that is ``--output-dir``'s
    (a folder) on every command; ``aliases`` (e.g. ``-o``) are hidden and warned about."""

    def deco(f):
        for old in aliases:
            def _stash(ctx, _param, value, old=old):
                if value is not None:
                    click.echo(f"warning: {old} FILE is deprecated here; use --output FILE ({old} is "
                               "--output-dir, a folder, on every command)", err=True)
                    if ctx.params.get("output") is None:
                        ctx.params["output"] = value
                    ctx.meta["mrfengine.output_alias"] = value

            f = click.option(old, "output_alias", type=click.Path(dir_okay=False), default=None, hidden=True,
                             expose_value=False, callback=_stash)(f)

        def _check(ctx, param, value):
            value = value if value is not None else ctx.meta.pop("mrfengine.output_alias", None)
            if value is None and required:
                raise click.MissingParameter(ctx=ctx, param=param)
            return value

        return click.option("--output", "output", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                            callback=_check, help=help)(f)

    return deco


def output_dir_option(help: str, *, required: bool = True):
    """``-o/--output-dir DIR`` (``output_dir``): a folder of outputs."""
    return click.option("-o", "--output-dir", "output_dir", required=required, type=click.Path(file_okay=False),
                        metavar="DIR", help=help)


def usage_error(option: str):
    """A context manager turning a library's :class:`~mrfengine.errors.ValidationError` about an
    option's value into click's :class:`click.BadParameter` (exit 2, the option named)."""
    from contextlib import contextmanager

    @contextmanager
    def _cm():
        from ..errors import OptionError, ValidationError

        try:
            yield
        except (ValidationError, OptionError) as exc:
            raise click.BadParameter(str(exc), param_hint=option) from None

    return _cm()
