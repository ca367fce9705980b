"""Options of commands that write files: ``--prefix`` (a plain name) and ``--force``."""

from __future__ import annotations

import click


def prefix_option(f):
    """``--prefix``: a plain name (no path separators, no ``..``); exit 2 otherwise."""

    def _check(_ctx, _param, value):
        if value is None:
            return None
        from ..errors import ValidationError
        from ..io.outputs import check_prefix

        try:
            return check_prefix(value, what="--prefix")
        except ValidationError as exc:
            raise click.BadParameter(str(exc), param_hint="--prefix") from None

    return click.option("--prefix", default=None, callback=_check,
                        help="The outputs' BIDS entities (sub-01_ses-2) or a subject label (patient7: sub-patient7); "
                             "default: from the input name (sub-01_ses-2_MRF.nii.gz: sub-01_ses-2).")(f)


def force_options(help: str = "Replace output files that already exist.", *, alias: str | None = None):
    """``--force`` (and, hidden, a deprecated old name of it such as ``--overwrite``)."""

    def deco(f):
        f = click.option("--force", is_flag=True, help=help)(f)
        if alias:
            def _warn(_ctx, _param, value):
                if value:
                    click.echo(f"warning: {alias} is deprecated; use --force", err=True)
                return value

            f = click.option(alias, "force_alias", is_flag=True, hidden=True, callback=_warn,
                             expose_value=True)(f)
        return f

    return deco


force_option = force_options()
"""``--force`` with its usual help: replace output files that already exist."""
