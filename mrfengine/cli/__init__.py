"""The ``mrfengine`` command line.

Exit codes: 0 success, 1 failure (a clear one-line error on stderr), 2 usage
error.  Heavy imports happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import importlib
import logging
import shlex
import sys

import click

from .. import __version__
from ..errors import MRFEngineError

# Each module defines ``commands``: a list of click commands to register.
_COMMAND_MODULES = ("demo", "dictionary", "match", "denoise", "info", "cohort", "predict", "evaluate", "train",
                    "batch", "report", "bids")


class _Main(click.Group):
    def invoke(self, ctx: click.Context):  # noqa: D401 - click API
        try:
            return super().invoke(ctx)
        except (MRFEngineError, OSError) as exc:
            # OSError: a file the user named cannot be read or written (permissions, a
            # file where a folder is needed, a full disk); its message names the path.
            logging.getLogger("mrfengine").debug("failure", exc_info=True)
            click.secho(f"error: {_one_line(exc)}", err=True, fg="red")
            ctx.exit(1)
        except MemoryError:
            logging.getLogger("mrfengine").debug("failure", exc_info=True)
            click.secho("error: out of memory (the input is larger than this machine can hold)", err=True, fg="red")
            ctx.exit(1)


def _one_line(exc: BaseException) -> str:
    """The error message on one line (a multi-line message is joined with '; ')."""
    text = str(exc) or type(exc).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


#: Loggers of other packages: WARNING and above only, unless -vv (their INFO/DEBUG chatter
#: -- Dask's scheduler start/stop, Numba's compiler, matplotlib's font cache, PIL's plugins,
#: urllib3's connections -- hides mrfengine's own messages).
THIRD_PARTY_LOGGERS = ("dask", "distributed", "tornado", "asyncio", "numba", "matplotlib", "PIL", "urllib3",
                       "fsspec", "s3fs", "gcsfs", "aiobotocore", "botocore", "boto3", "ants", "antspyx", "nilearn",
                       "nibabel", "zarr", "numcodecs", "h5py", "torch", "bokeh", "filelock", "httpx", "httpcore",
                       "dask_jobqueue", "bids", "pybids", "sklearn", "joblib", "fontTools")

_META = "mrfengine.logging"
_FORMAT = "%(levelname)s %(name)s: %(message)s"


class _ThirdPartyFilter(logging.Filter):
    """On the terminal: another package's records below WARNING only at -vv."""

    def __init__(self, verbose: int) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or self.verbose >= 2:
            return True
        return record.name.split(".")[0] in ("mrfengine", "root", "py")  # py.warnings: captured warnings


def configure_logging(verbose: int = 0, quiet: bool = False, log_file: str | None = None) -> None:
    """Set up the log: the terminal (stderr) at WARNING with -q, INFO by default and with -v,
    DEBUG with -vv; other packages' records there only from WARNING unless -vv; with
    ``log_file`` every record at DEBUG to that file too (mrfengine's and, at -vv, the others')."""
    level = logging.WARNING if quiet else (logging.INFO if verbose < 2 else logging.DEBUG)
    root = logging.getLogger()
    for h in list(root.handlers):  # ours, from an earlier call (-v after the command reconfigures)
        if getattr(h, "_mrfengine", False):
            root.removeHandler(h)
            h.close()
    term = logging.StreamHandler(sys.stderr)
    term.setLevel(level)
    term.setFormatter(logging.Formatter(_FORMAT))
    term.addFilter(_ThirdPartyFilter(verbose))
    term._mrfengine = True  # type: ignore[attr-defined]
    root.addHandler(term)
    root.setLevel(logging.DEBUG if log_file else level)
    if log_file:
        fh = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        fh._mrfengine = True  # type: ignore[attr-defined]
        root.addHandler(fh)
    # Other packages: WARNING unless -vv (or the log file, which takes every record).
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if (verbose >= 2 or log_file) else logging.WARNING)
    if verbose == 0:
        # Library chatter (e.g. the backend choice) only with -v (and in the log file).
        for chatty in ("mrfengine.matching", "mrfengine.backend"):
            logging.getLogger(chatty).setLevel(logging.DEBUG if log_file else logging.WARNING)
    else:
        for chatty in ("mrfengine.matching", "mrfengine.backend"):
            logging.getLogger(chatty).setLevel(logging.NOTSET)


def _verbosity(ctx: click.Context) -> dict:
    root = ctx.find_root()
    return root.meta.setdefault(_META, {"verbose": 0, "quiet": False, "log_file": None})


def _sub_verbose(ctx: click.Context, _param, value: int) -> int:
    """-v given after the command name: added to the count given before it."""
    if value:
        state = _verbosity(ctx)
        state["verbose"] += value
        configure_logging(**state)
    return value


def _sub_quiet(ctx: click.Context, _param, value: bool) -> bool:
    if value:
        state = _verbosity(ctx)
        state["quiet"] = True
        configure_logging(**state)
    return value


def _add_verbosity(cmd: click.Command) -> None:
    """Give a command (and a group's subcommands) -v/-q of its own, so `mrfengine batch X -v` works as
    `mrfengine -v batch X` does."""
    names = {opt for p in cmd.params for opt in getattr(p, "opts", ())}
    if "-v" not in names:
        cmd.params.append(click.Option(["-v", "--verbose", "sub_verbose"], count=True, expose_value=False,
                                       callback=_sub_verbose, help="More log output (-vv: debug, other packages' "
                                       "messages too); also accepted before the command."))
    if "-q" not in names:
        cmd.params.append(click.Option(["-q", "--quiet", "sub_quiet"], is_flag=True, expose_value=False,
                                       callback=_sub_quiet, help="Only warnings and errors."))
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            _add_verbosity(sub)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mrfengine")
@click.option("-v", "--verbose", count=True, help="More log output (-vv: debug, other packages' messages too).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option("--log-file", type=click.Path(dir_okay=False, writable=True), default=None, metavar="FILE",
              help="Also write every log record (DEBUG and up) to FILE, appended, with the command line and the "
                   "version.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, log_file: str | None) -> None:
    """mrfengine: MR fingerprinting (MRF-EPI) of the brain in multiple sclerosis.

    Start with `mrfengine demo`; `mrfengine COMMAND --help` explains each command.
    Options shared by the commands: --subjects, -o/--output-dir (a folder;
    a single file is --output), --force, --nthreads; -v/-q may also follow
    the command name.
    """
    state = _verbosity(ctx)
    state.update(verbose=verbose, quiet=quiet, log_file=log_file)
    try:
        configure_logging(**state)
    except OSError as exc:
        raise click.BadParameter(f"cannot write {log_file}: {exc.strerror or exc}", param_hint="--log-file") from None
    if log_file:
        args = (ctx.obj or {}).get("argv", sys.argv[1:])
        logging.getLogger("mrfengine").debug("mrfengine %s (Python %s): mrfengine %s", __version__,
                                             sys.version.split()[0], " ".join(shlex.quote(str(a)) for a in args))


for _name in _COMMAND_MODULES:
    for _cmd in importlib.import_module(f"{__name__}.{_name}").commands:
        _add_verbosity(_cmd)
        cli.add_command(_cmd)


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code."""
    try:
        # In non-standalone mode click returns the code of ctx.exit() calls.
        code = cli.main(args=argv, prog_name="mrfengine", standalone_mode=False,
                        obj={"argv": sys.argv[1:] if argv is None else list(argv)})
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
