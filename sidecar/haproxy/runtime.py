"""HAProxy's runtime API over its admin socket: send commands, parse ``show stat`` and ``show info``.

One connection per exchange (non-interactive mode): the commands go out
separated by ``;``, HAProxy answers each in turn and closes the connection.
Each command's output ends with an empty line. Syntax as ``help`` prints it
on 2.6: ``show stat``, ``show info``, ``set maxconn server <be>/<srv> <n>``,
``set map <map> <key> <value>``, ``set var proc.<name> int(<n>)`` (experimental
on 2.6: ``experimental-mode on`` first, in the same exchange), and ``flowctl rt`` (our Lua). A server's maxconn of 0 means *unlimited* to
HAProxy, so callers never send it (``set_maxconn`` refuses it).
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from flowctl.errors import DataPlaneError

__all__ = ["Runtime", "StatRow", "Stats", "parse_info", "parse_rt", "parse_stat", "set_map", "set_maxconn", "set_var", "split_answers"]

_READ_LIMIT = 1 << 22  # a show stat of a few proxies is a few kB; refuse runaway output


@dataclass(frozen=True, slots=True)
class StatRow:
    """One line of ``show stat``: a frontend, a backend or a server, by its CSV column names."""

    proxy: str
    name: str  # FRONTEND, BACKEND or the server's name
    fields: Mapping[str, str] = field(default_factory=dict)

    def num(self, column: str) -> int:
        """The column as an integer; 0 when empty (HAProxy leaves columns that do not apply empty)."""
        text = self.fields.get(column, "")
        try:
            return int(text) if text else 0
        except ValueError:
            return 0

    def has(self, column: str) -> bool:
        return bool(self.fields.get(column, ""))

    def responses(self) -> int:
        """HTTP responses counted on this line (``hrsp_1xx`` .. ``hrsp_other``)."""
        return sum(self.num(c) for c in ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other"))


@dataclass(frozen=True, slots=True)
class Stats:
    """One ``show stat`` (rows by ``(proxy, name)``) with the ``show info`` taken in the same exchange."""

    rows: Mapping[tuple[str, str], StatRow]
    info: Mapping[str, str]
    #: ``flowctl rt`` in the same exchange: the sampled responses' time sum (us) and count since the child
    #: started (HAProxy's Lua, ``sidecar.haproxy.render.HOP_LUA``); None when it did not answer
    rt: tuple[int, int] | None = None

    @property
    def pid(self) -> int | None:
        text = self.info.get("Pid", "")
        return int(text) if text.isdigit() else None

    def row(self, proxy: str, name: str) -> StatRow | None:
        return self.rows.get((proxy, name))


def parse_stat(text: str) -> dict[tuple[str, str], StatRow]:
    """``show stat`` CSV (its header line starts with ``# ``) as rows by ``(pxname, svname)``."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("# "):
        raise DataPlaneError(f"show stat: no CSV header in {text[:120]!r}")
    reader = csv.reader(io.StringIO("\n".join([lines[0][2:], *lines[1:]])))
    header = next(reader)
    rows: dict[tuple[str, str], StatRow] = {}
    for values in reader:
        if len(values) < 2:
            continue
        fields = dict(zip(header, values))
        rows[(values[0], values[1])] = StatRow(values[0], values[1], fields)
    return rows


def split_answers(text: str, n: int) -> list[str]:
    """The answers of ``n`` commands sent in one exchange: each is its message (lines, possibly none)
    followed by an empty line, so a command with nothing to say answers a lone newline."""
    out: list[str] = []
    pos = 0
    while len(out) < n and pos < len(text):
        if text.startswith("\n", pos):
            out.append("")
            pos += 1
            continue
        end = text.find("\n\n", pos)
        if end < 0:
            out.append(text[pos:].rstrip("\n"))
            break
        out.append(text[pos:end])
        pos = end + 2
    return out + [""] * (n - len(out))


def parse_rt(text: str) -> tuple[int, int] | None:
    """``flowctl rt`` (``<sum_us> <count>``) as integers; None for any other answer (an unknown command)."""
    parts = text.split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def parse_info(text: str) -> dict[str, str]:
    """``show info`` (``Name: value`` lines) as a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


class Runtime:
    """The admin socket at ``path``; every call is one short connection, bounded by ``timeout_s``."""

    def __init__(self, path: str, *, timeout_s: float = 1.0) -> None:
        self.path = path
        self.timeout_s = timeout_s

    async def send(self, commands: Sequence[str]) -> list[str]:
        """Run ``commands`` in one exchange; their outputs, in order. DataPlaneError if the socket fails."""
        for c in commands:
            if not c or any(ch in c for ch in ";\n\r\0"):
                raise DataPlaneError(f"runtime API: refusing command {c!r}")
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_unix_connection(self.path, limit=_READ_LIMIT)
                try:
                    writer.write((";".join(commands) + "\n").encode())
                    await writer.drain()
                    data = await reader.read(_READ_LIMIT)
                    while chunk := await reader.read(_READ_LIMIT):
                        data += chunk
                        if len(data) > _READ_LIMIT:
                            raise DataPlaneError("runtime API: answer too large")
                finally:
                    writer.close()
        except (OSError, TimeoutError) as e:
            raise DataPlaneError(f"runtime API at {self.path}: {type(e).__name__}: {e}") from None
        return split_answers(data.decode("utf-8", "replace"), len(commands))

    async def stats(self) -> Stats:
        """``show info``, ``show stat`` and ``flowctl rt`` in one exchange."""
        info, stat, rt = await self.send(["show info", "show stat", "flowctl rt"])
        return Stats(parse_stat(stat), parse_info(info), parse_rt(rt))

    async def apply(self, commands: Sequence[str]) -> None:
        """Run set commands; DataPlaneError naming the first that HAProxy answered with a message.
        ``set var`` is experimental on 2.6's CLI: the exchange turns that mode on first."""
        if not commands:
            return
        if any(c.startswith("set var ") for c in commands):
            commands = ["experimental-mode on", *commands]
        for command, answer in zip(commands, await self.send(commands)):
            if answer.strip():
                raise DataPlaneError(f"runtime API: {command!r} answered {answer.strip()[:200]!r}")


def set_var(name: str, n: int) -> str:
    """The command setting a process-scope integer variable (``proc.<name>``)."""
    if not re.fullmatch(r"proc\.[A-Za-z0-9_]+", name):
        raise ValueError(f"variable {name!r}: not proc.<word>")
    return f"set var {name} int({int(n)})"


def set_maxconn(backend: str, server: str, n: int) -> str:
    """The command setting a server's maxconn; never 0 (HAProxy's "unlimited") nor negative."""
    if n < 1:
        raise ValueError(f"maxconn must be >= 1, got {n}")
    return f"set maxconn server {backend}/{server} {int(n)}"


_TOKEN = re.compile(r"[A-Za-z0-9._-]+")


def set_map(map_path: str, key: str, value: int | str) -> str:
    """The command setting one ``admission.map`` entry (key and value: single tokens)."""
    text = str(int(value)) if isinstance(value, int) else value
    if not _TOKEN.fullmatch(key) or not _TOKEN.fullmatch(text):
        raise ValueError(f"map entry {key!r} {text!r}: not single tokens")
    return f"set map {map_path} {key} {text}"
