"""The ``callpath`` console script: run the server, migrate the database, manage SIP accounts.

Every command loads the same Settings (``--config FILE``, else $CALLPATH_CONFIG, else ./callpath.toml if
present, else defaults; CALLPATH_<SECTION>_<KEY> variables override the file) and brings the database
schema up to date first, so a fresh install needs no separate setup step. Expected failures (bad
configuration, duplicate account, unreachable database) print one ``callpath: error: ...`` line and
exit with status 1 instead of a traceback.
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from storage import Storage, StorageError, current_revision, migrate, users
from web.settings import Settings, SettingsError, load_settings, settings_help

CONFIG_ENV_VAR = "CALLPATH_CONFIG"
DEFAULT_CONFIG_FILE = "callpath.toml"


class CliError(Exception):
    """A failure to report to the user as one line, exiting with status 1."""


# ----------------------------------------------------------------------------------------- settings


def resolve_config_path(explicit: str | None, env: Mapping[str, str] = os.environ) -> Path | None:
    """The config file to read: --config, else $CALLPATH_CONFIG, else ./callpath.toml if it exists, else none."""
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_ENV_VAR):
        return Path(env[CONFIG_ENV_VAR])
    local = Path(DEFAULT_CONFIG_FILE)
    return local if local.is_file() else None


def _settings(args: argparse.Namespace) -> Settings:
    """Load the Settings the command line asks for."""
    return load_settings(resolve_config_path(args.config), os.environ)


def _safe_url(url: str) -> str:
    """The database URL with any password masked, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is reported by the engine; just do not echo it verbatim
        return "<database url>"


def _migrate(settings: Settings) -> str | None:
    """Upgrade the configured database to the newest schema and return its revision."""
    url = settings.database_url
    migrate(url)
    return current_revision(url)


# ------------------------------------------------------------------------------------------ commands


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    """Migrate, then hand the settings to web.server.serve (sync, or async run on a new event loop)."""
    settings = _settings(args)
    if args.sip_trace:
        settings.sip.sip_trace = True
    _migrate(settings)
    try:
        from web.server import serve  # lazily: the server pulls in the whole stack
    except ModuleNotFoundError as exc:
        if exc.name in ("web.server", "web"):
            raise CliError("the server module web.server is not available in this installation") from exc
        raise
    try:
        result = serve(settings)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
    except KeyboardInterrupt:  # SIGINT before serve installed its own handlers: still a clean exit
        return 0
    return result if isinstance(result, int) else 0


def cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    """Upgrade the database schema and say which revision it is at."""
    settings = _settings(args)
    revision = _migrate(settings)
    print(f"database {_safe_url(settings.database_url)} is at revision {revision}", file=out)
    return 0


def _obtain_password(given: str | None, *, confirm: bool) -> str:
    """--password if given, else prompt (twice when ``confirm``) on a terminal, else a CliError."""
    if given is not None:
        return given
    if not sys.stdin.isatty():
        raise CliError("--password is required when standard input is not a terminal")
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Password (again): ") != password:
        raise CliError("the passwords do not match")
    return password


def _open_storage(settings: Settings) -> Storage:
    """Migrate the configured database and open it for the user commands."""
    _migrate(settings)
    return Storage(settings.database_url, workers=1)


def cmd_user_add(args: argparse.Namespace, out: TextIO) -> int:
    """Create a SIP account whose HA1 hashes are computed for the configured realm."""
    settings = _settings(args)
    password = _obtain_password(args.password, confirm=True)
    realm = settings.sip.realm
    with _open_storage(settings) as store, store.session() as session:
        user = users.add_sip_user(
            session,
            args.username,
            password,
            realm,
            extension=args.extension,
            display_name=args.display_name or "",
            enabled=not args.disabled,
        )
        extension = f", extension {user.extension}" if user.extension else ""
    print(f"created SIP user {args.username} (sip:{args.username}@{realm}{extension})", file=out)
    return 0


def cmd_user_list(args: argparse.Namespace, out: TextIO) -> int:
    """Print the SIP accounts, flagging those whose credentials were made for another realm."""
    settings = _settings(args)
    realm = settings.sip.realm
    with _open_storage(settings) as store, store.session() as session:
        rows = [
            (u.username, u.extension or "-", "yes" if u.enabled else "no", u.display_name, u.realm)
            for u in users.list_sip_users(session)
        ]
    if not rows:
        print("no SIP users", file=out)
        return 0
    width_user = max(len("USERNAME"), *(len(r[0]) for r in rows))
    width_ext = max(len("EXTENSION"), *(len(r[1]) for r in rows))
    print(f"{'USERNAME':<{width_user}}  {'EXTENSION':<{width_ext}}  ENABLED  DISPLAY NAME", file=out)
    for username, extension, enabled, display_name, user_realm in rows:
        note = "" if user_realm == realm else f"  [password set for realm {user_realm!r}: run `callpath user passwd`]"
        print(f"{username:<{width_user}}  {extension:<{width_ext}}  {enabled:<7}  {display_name}{note}", file=out)
    return 0


def cmd_user_del(args: argparse.Namespace, out: TextIO) -> int:
    """Delete a SIP account."""
    settings = _settings(args)
    with _open_storage(settings) as store, store.session() as session:
        deleted = users.delete_sip_user(session, args.username)
    if not deleted:
        raise CliError(f"no SIP user {args.username!r}")
    print(f"deleted SIP user {args.username}", file=out)
    return 0


def cmd_user_passwd(args: argparse.Namespace, out: TextIO) -> int:
    """Set a SIP account's password (recomputing its HA1 hashes for the configured realm)."""
    settings = _settings(args)
    realm = settings.sip.realm
    with _open_storage(settings) as store:
        with store.session() as session:  # fail on an unknown user before prompting
            if users.get_sip_user(session, args.username) is None:
                raise CliError(f"no SIP user {args.username!r}")
        password = _obtain_password(args.password, confirm=True)
        with store.session() as session:
            users.set_password(session, args.username, password, realm)
    print(f"password set for SIP user {args.username} (realm {realm})", file=out)
    return 0


# ------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree: run, migrate, user {add,list,del,passwd}."""
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML settings file (default: ${CONFIG_ENV_VAR}, else ./{DEFAULT_CONFIG_FILE} if present)",
    )

    parser = argparse.ArgumentParser(
        prog="callpath",
        description="Contact-center telephony: SIP registrar/proxy, WebRTC<->SIP media bridge, ACD, web UI.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        parents=[config],
        help="migrate the database and start the server",
        description="Migrate the database, then start SIP, media, ACD and the web server.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--sip-trace", action="store_true", help="print every SIP message sent/received")
    run.set_defaults(handler=cmd_run)

    migrate = commands.add_parser("migrate", parents=[config], help="upgrade the database schema to the newest")
    migrate.set_defaults(handler=cmd_migrate)

    user = commands.add_parser("user", help="manage SIP accounts")
    user_commands = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")

    add = user_commands.add_parser("add", parents=[config], help="create a SIP account")
    add.add_argument("username", metavar="USERNAME", help="user part of the AOR sip:USERNAME@domain")
    add.add_argument("--password", help="digest password (omit to be prompted; visible to `ps` when given here)")
    add.add_argument("--extension", help="number other users dial to reach this account")
    add.add_argument("--display-name", default="", help="name shown to callees")
    add.add_argument("--disabled", action="store_true", help="create the account disabled")
    add.set_defaults(handler=cmd_user_add)

    list_ = user_commands.add_parser("list", parents=[config], help="list SIP accounts")
    list_.set_defaults(handler=cmd_user_list)

    delete = user_commands.add_parser("del", parents=[config], help="delete a SIP account")
    delete.add_argument("username", metavar="USERNAME")
    delete.set_defaults(handler=cmd_user_del)

    passwd = user_commands.add_parser("passwd", parents=[config], help="set a SIP account's password")
    passwd.add_argument("username", metavar="USERNAME")
    passwd.add_argument("--password", help="new password (omit to be prompted)")
    passwd.set_defaults(handler=cmd_user_passwd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit status (0 ok, 1 error, 2 usage)."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace, TextIO], int] = args.handler
    try:
        return handler(args, sys.stdout)
    except (CliError, SettingsError) as exc:
        message = str(exc)
    except StorageError as exc:
        message = str(exc)
    except SQLAlchemyError as exc:
        message = f"database error: {getattr(exc, 'orig', None) or exc}".strip()
    print(f"callpath: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
