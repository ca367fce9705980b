"""The ``mrfengine`` command line.

Exit codes: 0 success, 1 failure (a clear one-line error on stderr), 2 usage
error.  Heavy imports happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from .. import __version__
from ..errors import MRFEngineError

# Each module defines ``commands``: a list of click commands to register.
_COMMAND_MODULES = ("demo", "dictionary", "match", "denoise", "info", "cohort", "predict", "evaluate", "train",
                    "batch", "report")


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


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mrfengine")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def cli(verbose: int, quiet: bool) -> None:
    """mrfengine: MR fingerprinting (MRF-EPI) of the brain in multiple sclerosis.

    Start with `mrfengine demo`; `mrfengine COMMAND --help` explains each command.
    """
    level = logging.WARNING if quiet else (logging.INFO if verbose < 2 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    if verbose == 0:
        # Library chatter (e.g. the backend choice) only with -v.
        for chatty in ("mrfengine.matching", "mrfengine.backend"):
            logging.getLogger(chatty).setLevel(logging.WARNING)


for _name in _COMMAND_MODULES:
    for _cmd in importlib.import_module(f"{__name__}.{_name}").commands:
        cli.add_command(_cmd)


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code."""
    try:
        # In non-standalone mode click returns the code of ctx.exit() calls.
        code = cli.main(args=argv, prog_name="mrfengine", standalone_mode=False)
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
