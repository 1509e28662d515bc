"""SIP account data access, synchronous, on a caller-supplied Session.

These functions are the single implementation; ``storage.Storage`` runs them on its worker threads for
asyncio callers (the SIP core), and the CLI calls them directly. Each mutating function flushes so that
constraint violations surface here, as ``DuplicateSipUserError``, rather than at the caller's commit;
the caller owns the transaction (and rolls it back when one of these raises).
"""
from __future__ import annotations

import re

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import SipUser


class StorageError(Exception):
    """Base class for storage errors a caller can report to a user as-is."""


class DuplicateSipUserError(StorageError):
    """An account with the same username or extension already exists."""


class SipUserNotFoundError(StorageError):
    """No account has the given username."""


class InvalidSipUserError(StorageError, ValueError):
    """A username, extension, realm or password that cannot be stored."""


# RFC 3261 "user" characters minus the escapes: no ':' or '@', which would break the AOR and the
# "username:realm:password" HA1 input.
_USERNAME_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/]{1,64}")
_EXTENSION_RE = re.compile(r"[0-9*#+]{1,32}")


def _check_username(username: str) -> None:
    """Reject usernames that are empty, too long or not valid in a SIP URI user part."""
    if not _USERNAME_RE.fullmatch(username):
        raise InvalidSipUserError(
            f"invalid username {username!r}: 1-64 characters from letters, digits and -_.!~*'()&=+$,;?/"
        )


def _check_extension(extension: str | None) -> None:
    """Reject extensions that are not 1-32 dialable characters (digits, *, #, +)."""
    if extension is not None and not _EXTENSION_RE.fullmatch(extension):
        raise InvalidSipUserError(f"invalid extension {extension!r}: 1-32 characters from digits, *, # and +")


def _check_secret(password: str, realm: str) -> None:
    """Reject an empty password or realm (an empty realm would make every HA1 wrong once one is set)."""
    if not password:
        raise InvalidSipUserError("the password must not be empty")
    if not realm:
        raise InvalidSipUserError("the realm must not be empty")


def get_sip_user(session: Session, username: str) -> SipUser | None:
    """The account with exactly this username (SIP user parts are case-sensitive), or None."""
    return session.scalars(select(SipUser).where(SipUser.username == username)).one_or_none()


def get_sip_user_by_extension(session: Session, extension: str) -> SipUser | None:
    """The account owning ``extension``, or None."""
    return session.scalars(select(SipUser).where(SipUser.extension == extension)).one_or_none()


def list_sip_users(session: Session) -> list[SipUser]:
    """All accounts ordered by username."""
    return list(session.scalars(select(SipUser).order_by(SipUser.username)))


def add_sip_user(
    session: Session,
    username: str,
    password: str,
    realm: str,
    *,
    extension: str | None = None,
    display_name: str = "",
    enabled: bool = True,
) -> SipUser:
    """Create an account with HA1 hashes for ``realm``; DuplicateSipUserError names the clashing field."""
    _check_username(username)
    extension = extension or None
    _check_extension(extension)
    _check_secret(password, realm)
    if get_sip_user(session, username) is not None:
        raise DuplicateSipUserError(f"SIP user {username!r} already exists")
    if extension is not None:
        owner = get_sip_user_by_extension(session, extension)
        if owner is not None:
            raise DuplicateSipUserError(f"extension {extension} is already assigned to {owner.username!r}")
    user = SipUser(username=username, extension=extension, display_name=display_name, enabled=enabled)
    user.set_credentials(password, realm)
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent writer won the race between the checks and the insert
        raise DuplicateSipUserError(f"SIP user {username!r} or extension {extension} already exists") from exc
    return user


def delete_sip_user(session: Session, username: str) -> bool:
    """Delete the account; True if it existed."""
    result = session.execute(delete(SipUser).where(SipUser.username == username))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def set_password(session: Session, username: str, password: str, realm: str) -> SipUser:
    """Recompute the account's HA1 hashes for ``password`` in ``realm`` (also how a realm change is applied)."""
    _check_secret(password, realm)
    user = get_sip_user(session, username)
    if user is None:
        raise SipUserNotFoundError(f"no SIP user {username!r}")
    user.set_credentials(password, realm)
    session.flush()
    return user


def set_enabled(session: Session, username: str, enabled: bool) -> SipUser:
    """Enable or disable an account without touching its credentials."""
    user = get_sip_user(session, username)
    if user is None:
        raise SipUserNotFoundError(f"no SIP user {username!r}")
    user.enabled = enabled
    session.flush()
    return user
