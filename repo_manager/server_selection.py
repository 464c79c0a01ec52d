"""Which servers of a fleet a ``--servers`` / ``--exclude`` list names: the one matcher.

A fleet is a list of Triton urls, ``HOST:PORT`` (``dns://NAME:PORT`` entries already
expanded by ``discovery``). A name given by a person matches:

- ``HOST:PORT``: that server;
- ``HOST``: every server on that host (compose: ``triton-0``, ``triton-1``);
- ``dns://NAME:PORT``: every address NAME resolves to now (the "label" of a ``dns://``
  fleet: e.g. one headless Service per zone, both given as ``--url``);
- ``all`` (``--servers`` only): every server, i.e. no limit.

A name that matches no server of the fleet is refused in one line that lists the fleet,
before anything is changed. The result is the canary's servers in fleet order, or None
when it covers the whole fleet (no limit: a server that joins a ``dns://`` fleet later
gets the canary too).
"""

from __future__ import annotations

from collections.abc import Sequence

from repo_manager.discovery import DNS_SCHEME, Resolver, resolve_urls, split_url
from repo_manager.errors import InvalidInputError

__all__ = ["ALL", "matching", "parse_names", "select_servers"]

#: ``--servers all``: every server of the fleet.
ALL = "all"


def parse_names(text: str | None, option: str) -> list[str] | None:
    """``A,B`` -> ["A", "B"]; None when the option was not given; one line when empty."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InvalidInputError(f"{option} needs at least one server name (HOST, HOST:PORT)")
    return names


def matching(name: str, fleet: Sequence[str], *, resolver: Resolver | None = None) -> list[str]:
    """The servers of ``fleet`` that ``name`` stands for (maybe none)."""
    if name.startswith(DNS_SCHEME):
        addresses = set(resolve_urls([name], resolver=resolver))
        return [url for url in fleet if url in addresses]
    if name in fleet:
        return [name]
    return [url for url in fleet if split_url(url)[0] == name.strip("[]")]


def _expand(
    names: Sequence[str], fleet: Sequence[str], option: str, resolver: Resolver | None
) -> set[str]:
    chosen: set[str] = set()
    for name in names:
        found = (
            fleet
            if name == ALL and option == "--servers"
            else matching(name, fleet, resolver=resolver)
        )
        if not found:
            raise InvalidInputError(
                f"{option} {name}: no server of the fleet is {name} "
                f"(fleet: {', '.join(fleet)}; name HOST, HOST:PORT or a dns:// --url)"
            )
        chosen.update(found)
    return chosen


def select_servers(
    fleet: Sequence[str],
    servers: Sequence[str] | None,
    exclude: Sequence[str] | None,
    *,
    resolver: Resolver | None = None,
) -> tuple[str, ...] | None:
    """The canary's servers that ``servers`` minus ``exclude`` name, in fleet order; None
    for the whole fleet. Refuses unknown names and a choice that leaves no server."""
    chosen = set(fleet) if servers is None else _expand(servers, fleet, "--servers", resolver)
    if exclude is not None:
        chosen -= _expand(exclude, fleet, "--exclude", resolver)
    if not chosen:
        raise InvalidInputError(
            f"--servers/--exclude leave the canary no server (fleet: {', '.join(fleet)})"
        )
    if chosen >= set(fleet):
        return None
    return tuple(url for url in fleet if url in chosen)
