"""Who may act for which encoders through the local API (``[local_api] allow``).

The socket's mode and group decide who can connect at all. On a host shared by tenants,
``allow`` narrows that down: each rule names a user or a group, and the domains and
encoders its members may act for::

    [local_api]
    allow = [
      { user = "enc-a", domains = ["tenant-a"] },
      { group = "video", encoders = ["ENC-*"] },
    ]

- With no rule (the default) anyone who can open the socket may act for every encoder,
  as before: the socket's permissions are the only fence.
- With rules, a caller is known by its peer credentials (``SO_PEERCRED``: uid, gid, pid,
  taken by the kernel at ``connect()``, so they cannot be claimed). A rule applies to it
  when its ``user`` is the caller's user (name or uid), or its ``group`` is the caller's
  primary group or one the group database lists the user in. The caller may act for an
  encoder when an applying rule covers both the encoder's serial (``encoders``, shell
  patterns; absent: any) and its domain (``domains``, shell patterns, ``"-"`` for the
  host's own server binding; absent: any). Every domain counts: the one asked for, and
  the one the encoder's current wish or lease is in, so that no caller moves or drops
  another tenant's lease.
- root and the agent's own user always may act for everything: both can read the state
  directory anyway.

``Scope`` is one caller's answer to "may I?", made per request by ``Access.scope``.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

SERVER = "-"  # how rules name the host's own (server) binding, as `status` shows it
_UCRED = "iII"  # struct ucred: pid_t, uid_t, gid_t
_RULE_KEYS = frozenset({"user", "group", "domains", "encoders"})


@dataclass(frozen=True)
class Caller:
    """A process on the other end of the socket, as the kernel vouches for it."""

    pid: int
    uid: int
    gid: int

    def describe(self) -> str:
        name = _user_name(self.uid)
        return f'user "{name}" (uid {self.uid})' if name is not None else f"uid {self.uid}"


def peer_credentials(sock: Any) -> Caller | None:
    """The ``SO_PEERCRED`` of a connected Unix socket; None where the platform has none."""
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize(_UCRED))
    except OSError:
        return None
    pid, uid, gid = struct.unpack(_UCRED, raw)
    return Caller(pid, uid, gid)


def _names(values: Any, what: str) -> tuple[str, ...] | None:
    if values is None:
        return None
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"'{what}' must be a list of names or patterns, e.g. [\"tenant-a\"]")
    return tuple(values)


def _id_or_name(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ValueError(f"'{what}' must be a name or a number")
    return str(value)


@dataclass(frozen=True)
class Rule:
    """One entry of ``allow``: who (``user`` or ``group``) may act for what."""

    user: str | None = None
    group: str | None = None
    domains: tuple[str, ...] | None = None
    encoders: tuple[str, ...] | None = None

    @classmethod
    def from_toml(cls, entry: Any) -> Rule:
        if not isinstance(entry, dict):
            raise ValueError('each entry of \'allow\' must be a table, e.g. {user = "enc-a", domains = ["tenant-a"]}')
        unknown = sorted(set(entry) - _RULE_KEYS)
        if unknown:
            raise ValueError(f"unknown key '{unknown[0]}' in an 'allow' entry (known: domains, encoders, group, user)")
        rule = cls(
            user=_id_or_name(entry.get("user"), "user"),
            group=_id_or_name(entry.get("group"), "group"),
            domains=_names(entry.get("domains"), "domains"),
            encoders=_names(entry.get("encoders"), "encoders"),
        )
        if (rule.user is None) == (rule.group is None):
            raise ValueError("each entry of 'allow' names either a user or a group")
        return rule

    def applies_to(self, caller: Caller) -> bool:
        if self.user is not None:
            return self.user == str(caller.uid) or self.user == _user_name(caller.uid)
        assert self.group is not None
        gid = int(self.group) if self.group.isdigit() else _group_id(self.group)
        return gid is not None and gid in _groups(caller)

    def covers_encoder(self, encoder: str) -> bool:
        return self.encoders is None or any(fnmatchcase(encoder, p) for p in self.encoders)

    def covers(self, encoder: str, domain: str | None) -> bool:
        return self.covers_encoder(encoder) and self.covers_domain(domain)

    def covers_domain(self, domain: str | None) -> bool:
        return self.domains is None or any(fnmatchcase(domain or SERVER, p) for p in self.domains)


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _groups(caller: Caller) -> set[int]:
    """The caller's primary group, and the groups the group database lists its user in."""
    name = _user_name(caller.uid)
    found = {caller.gid}
    if name is not None:
        found.update(os.getgrouplist(name, caller.gid))
    return found


@dataclass(frozen=True)
class Scope:
    """What one caller may act for; ``rules`` None means everything."""

    caller: Caller | None
    rules: tuple[Rule, ...] | None

    @property
    def everything(self) -> bool:
        return self.rules is None

    @property
    def anything(self) -> bool:
        return self.rules is None or bool(self.rules)

    def may(self, encoder: str, domains: Iterable[str | None]) -> bool:
        """Whether the caller may act for ``encoder`` in each of ``domains``."""
        if self.rules is None:
            return True
        return all(any(r.covers(encoder, d) for r in self.rules) for d in domains)

    def may_name(self, encoder: str) -> bool:
        """Whether some rule covers ``encoder``'s serial at all (its domain not yet known)."""
        return self.rules is None or any(r.covers_encoder(encoder) for r in self.rules)

    def sees_domain(self, domain: str | None) -> bool:
        return self.rules is None or any(r.covers_domain(domain) for r in self.rules)

    def who(self) -> str:
        return self.caller.describe() if self.caller is not None else "this caller (no peer credentials)"


EVERYTHING = Scope(None, None)


@dataclass(frozen=True)
class Access:
    """The ``[local_api]`` setting: the ``allow`` rules (none: anyone on the socket)."""

    allow: tuple[Rule, ...] = ()

    @classmethod
    def from_setting(cls, raw: Any) -> Access:
        """From the config file's table, or the same table as TOML text (environment)."""
        if isinstance(raw, str):
            import tomllib  # read at start only: see agent/cli.py, _load_config

            try:
                raw = tomllib.loads(raw)
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f'is not a TOML table, e.g. allow = [{{user = "enc-a"}}] ({exc})') from exc
        if not isinstance(raw, dict):
            raise ValueError("must be a table with an 'allow' list")
        unknown = sorted(set(raw) - {"allow"})
        if unknown:
            raise ValueError(f"unknown key '{unknown[0]}' (known: allow)")
        entries = raw.get("allow", [])
        if not isinstance(entries, list):
            raise ValueError("'allow' must be a list of tables")
        return cls(tuple(Rule.from_toml(e) for e in entries))

    def scope(self, caller: Caller | None) -> Scope:
        """What ``caller`` may act for (everything when no rule is set)."""
        if not self.allow:
            return EVERYTHING
        if caller is None:
            return Scope(None, ())
        if caller.uid in (0, os.getuid()):
            return Scope(caller, None)
        return Scope(caller, tuple(r for r in self.allow if r.applies_to(caller)))

    def unknown_names(self) -> list[str]:
        """Users and groups named in rules that this host does not know (worth a warning)."""
        missing = []
        for rule in self.allow:
            if rule.user is not None and not rule.user.isdigit() and _uid(rule.user) is None:
                missing.append(f'user "{rule.user}"')
            if rule.group is not None and not rule.group.isdigit() and _group_id(rule.group) is None:
                missing.append(f'group "{rule.group}"')
        return missing


def _uid(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None
