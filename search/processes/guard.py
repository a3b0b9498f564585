"""The CLI's guard: whatever goes wrong, the user gets one ``Error:`` line and a non-zero exit, never a
traceback.

``SafeGroup`` makes every command of ``search`` (whoever adds it) a ``SafeCommand``, whose exceptions
become one line: our own errors (``UserError``, ``DataError``) as they are, anything unexpected as what
failed, with its traceback appended to the study's log file. Click's own errors and exits keep their
behaviour (usage errors their usage line, Ctrl-C click's "Aborted!").
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
import traceback

import click

from data.errors import DataError, printable
from search.errors import Stopped, Terminated, UserError

# Let through as they are: click's own errors and exits (usage errors keep their usage line), and
# Ctrl-C (click prints "Aborted!").
_PASS_THROUGH = (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, KeyboardInterrupt,
                 SystemExit, GeneratorExit)


def _guarded(ctx: click.Context, call):
    """Run a command so that *any* exception reaches the user as one ``Error:`` line and a non-zero exit:
    our own errors as they are, anything unexpected as what failed, with its traceback appended to the
    study's log file (``studies/<study>/search.log``, or ``studies/search.log`` without a study)."""
    from search.db.redaction import scrub

    # Every error line through printable(): whatever user text a message quotes (a CSV's Id, a path, a database's
    # reason) reaches the terminal escaped, never as control bytes it would obey.
    previous_hook = threading.excepthook
    threading.excepthook = _thread_failed  # Optuna's heartbeat thread, say, on a full disk: one line, no traceback
    try:
        return call(ctx)
    except Stopped as err:  # `search run` stopped by a signal, after its summary: 128 + the signal
        raise _exit(printable(str(err)), err.exit_code) from None
    except Terminated:
        raise _exit(f"search {ctx.info_name if ctx.parent else 'run'}: stopped by SIGTERM (a running trial ended "
                    "FAIL, ended: interrupted)", 128 + signal.SIGTERM) from None
    except _PASS_THROUGH:
        raise
    except (UserError, DataError) as err:
        raise click.ClickException(printable(scrub(str(err)))) from None
    except Exception as err:  # noqa: BLE001 - the point: no traceback on the console, ever
        raise click.ClickException(printable(_unexpected(ctx, err))) from None
    finally:
        threading.excepthook = previous_hook


def _thread_failed(args) -> None:
    """``threading.excepthook`` while a command runs: a background thread that dies (Optuna's heartbeat thread
    when the disk is full or the database went away) is one warning line on the console, its traceback in the
    study's log file (through the ``search`` logger), instead of Python's traceback on the terminal. The command
    itself then fails or goes on as its main thread decides."""
    from search.db.storage import redact

    if args.exc_type is SystemExit:
        return
    name = getattr(args.thread, "name", None) or "a background thread"
    line = f"warning: {name} stopped: {_describe(args.exc_value)}"
    try:
        click.echo(printable(redact(line)), err=True)
        logger = logging.getLogger("search")
        if logger.hasHandlers():  # else logging's last resort would print the traceback on the terminal
            logger.warning(redact(line), exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
    except Exception:  # noqa: BLE001 - the console or the log may be what failed: nothing more to say then
        pass


def _exit(message: str, code: int) -> click.ClickException:
    err = click.ClickException(message)
    err.exit_code = code
    return err


def _unexpected(ctx: click.Context, err: Exception) -> str:
    from search.files import STUDIES
    from search.reporting.logs import FORMAT, _words, log_path
    from search.db.storage import check_study_name, redact

    name = ctx.params.get("study_name")
    try:
        check_study_name(name)
        path = log_path(name)
    except Exception:  # noqa: BLE001 - no study, or not a usable name: the common log file
        path = STUDIES / "search.log"
    names, c = [], ctx
    while c.parent is not None:  # the subcommands' names ("run", "data check"), whatever argv[0] was
        names.insert(0, c.info_name)
        c = c.parent
    what_ran = " ".join(["search", *names])
    command = " ".join([what_ran, *_words(ctx)])
    header = logging.Formatter(FORMAT).format(logging.makeLogRecord(
        {"msg": f"unexpected error in: {command}", "levelname": "ERROR", "levelno": logging.ERROR,
         "created": time.time()}))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as log:
            log.write(redact(header + "\n" + "".join(traceback.format_exception(err))))
        where = f"traceback in {path}"
    except OSError as log_err:
        where = f"its traceback could not be written to {path}: {log_err.strerror or log_err}"
    lost = _lost_proxy(err)
    if lost is not None:  # the storage proxy went away: what the user must know, not a gRPC client's internals
        url = ctx.params.get("storage") or "the storage proxy"
        after = ("; a trial it was running stays RUNNING there until a `search run` of this study on this machine, "
                 "once the proxy is back, records it as FAIL" if ctx.info_name == "run" else "")
        return redact(f"{what_ran}: the storage proxy at {url} stopped answering ({lost}){after} ({where})")
    what, root = _describe(err), err
    for _ in range(10):  # the root cause says more ("database or disk is full") than a wrapper's message
        root = root.__cause__ or root.__context__ or root
        if root.__cause__ is None and root.__context__ is None:
            break
    if root is not err and _describe(root) != what:
        what += f"; cause: {_describe(root)}"
    return redact(f"{what_ran} failed: {what} ({where})")


def _lost_proxy(err: BaseException) -> str | None:
    """The gRPC status text where ``err`` or what caused it is a call to a ``search proxy`` that no longer
    answers (UNAVAILABLE: the proxy was stopped or killed, or its machine is gone). Optuna's gRPC client can
    fail on it with an unrelated error (an ``UnboundLocalError`` in its own code), so the chain is searched."""
    try:
        import grpc
    except ImportError:  # no gRPC client installed: no proxy was used
        return None
    seen, e = set(), err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, grpc.RpcError) and callable(getattr(e, "code", None)):
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return f"gRPC {e.code().name}"
        e = e.__cause__ or e.__context__
    return None


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else f"{type(e).__name__}: {e.strerror}"
    text = str(getattr(e, "orig", None) or e).strip()
    return type(e).__name__ + (f": {text.splitlines()[0][:200]}" if text else "")


class SafeCommand(click.Command):
    """A command whose unexpected exceptions are one ``Error:`` line (see ``_guarded``)."""

    def invoke(self, ctx: click.Context):
        return _guarded(ctx, super().invoke)


class SafeGroup(click.Group):
    """``search`` and its sub-groups: every command in them is a SafeCommand, whoever adds it."""

    command_class = SafeCommand
    group_class = type  # sub-groups (``search data``) are SafeGroups too

    def invoke(self, ctx: click.Context):
        return _guarded(ctx, super().invoke)


def friendly_errors(command):
    """Show our errors (and the storage's) as one line, never a traceback: for a command outside a
    SafeGroup (every command of ``search`` is guarded already)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from search.db.redaction import scrub

        try:
            return command(*args, **kwargs)
        except (UserError, DataError) as err:
            raise click.ClickException(printable(scrub(str(err)))) from None

    return wrapper
