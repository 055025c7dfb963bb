"""Read-only SQL: what `lake.query` (and so `cellfarm sql`) runs unless writes are allowed.

Two layers, the engine's own first:
- the connection is locked down once the lake's views are bound: `enable_external_access = false` with the lake
  root as the one allowed directory, so DuckDB itself refuses to read or write any file or URL outside the lake
  (`read_csv('/etc/passwd')`, `COPY ... TO '/tmp/x'`, `ATTACH`, `INSTALL` / `LOAD`), extensions are never
  autoloaded, and `lock_configuration` keeps any `SET` from undoing it;
- the statement types from DuckDB's own parser (`duckdb.extract_statements`): only `SELECT` and a plain `EXPLAIN`
  of one run, since the engine would still let `COPY`, `ATTACH` or `EXPORT` write *inside* the lake root.

`delta_scan` reads a table's transaction log through delta-kernel, past DuckDB's file checks (its data files are
still checked): on DuckDB's parse tree (`json_serialize_sql`), its path must be a literal inside the lake, and
`query()` (SQL in a string, which the tree does not show) is refused.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from lake._errors import InvalidInputError

if TYPE_CHECKING:
    import duckdb

__all__ = ["ReadOnlySqlError", "check_read_only", "lock_down", "permission_hint"]

# `EXPLAIN` after any leading comments; ANALYZE (which runs the statement) and options are not taken
_EXPLAIN = re.compile(r"^(?:\s+|--[^\n]*\n|/\*.*?\*/)*explain\s+(?P<rest>.*)$", re.IGNORECASE | re.DOTALL)
_DELTA_SCANS = frozenset({"delta_scan"})
_DYNAMIC_SQL = frozenset({"query"})
_HINT = "cellfarm sql --allow-writes lifts read-only mode"


class ReadOnlySqlError(InvalidInputError):
    """A statement that writes, changes state or reads outside the lake, run without allowing writes."""


def lock_down(con: duckdb.DuckDBPyConnection, root: str) -> None:
    """After this, `con` reads files under `root` only, loads nothing and keeps its settings (for good)."""
    con.execute("SET allowed_directories = $1", [[root.rstrip("/") + "/"]])
    for setting in ("enable_external_access", "autoload_known_extensions", "autoinstall_known_extensions"):
        con.execute(f"SET {setting} = false")
    con.execute("SET lock_configuration = true")


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str, *, root: str) -> None:
    """Raise :class:`ReadOnlySqlError` unless every statement of `sql` only reads the lake.

    A statement DuckDB cannot parse raises its own `duckdb.ParserException` (the caller reports it)."""
    import duckdb

    for statement in duckdb.extract_statements(sql):
        kind = statement.type
        if kind == duckdb.StatementType.SELECT:
            _check_tree(con, statement.query, root)
        elif kind == duckdb.StatementType.EXPLAIN:
            _check_explain(con, statement.query, root)
        else:
            raise ReadOnlySqlError(f"SQL error: read-only: {kind.name} statements are refused ({_HINT})")


def permission_hint(error: Exception) -> str:
    """What to add to DuckDB's "file system operations are disabled by configuration" for a user."""
    import duckdb

    if isinstance(error, duckdb.PermissionException):
        return f" (read-only mode reads files inside the lake only; {_HINT})"
    return ""


def _check_explain(con: duckdb.DuckDBPyConnection, text: str, root: str) -> None:
    import duckdb

    match = _EXPLAIN.match(text)
    rest = match.group("rest") if match else ""
    if not rest or rest.lstrip()[:1] == "(" or rest.lstrip().lower().startswith(("analyze", "analyse")):
        raise ReadOnlySqlError(
            f"SQL error: read-only: EXPLAIN ANALYZE (it runs the query) and EXPLAIN (...) are refused ({_HINT})"
        )
    inner = duckdb.extract_statements(rest)
    if len(inner) != 1 or inner[0].type != duckdb.StatementType.SELECT:
        raise ReadOnlySqlError(f"SQL error: read-only: only EXPLAIN of a SELECT is allowed ({_HINT})")
    _check_tree(con, inner[0].query, root)


def _check_tree(con: duckdb.DuckDBPyConnection, text: str, root: str) -> None:
    row = con.execute("SELECT json_serialize_sql($1)", [text]).fetchone()
    tree = json.loads(row[0]) if row else {}
    if tree.get("error"):  # a form the serializer does not know: refused rather than run unchecked
        raise ReadOnlySqlError(f"SQL error: read-only: cannot check the statement: {tree.get('error_message')}")
    for node in _nodes(tree):
        if node.get("type") != "TABLE_FUNCTION" or not isinstance(node.get("function"), dict):
            continue
        fn = node["function"]
        name = str(fn.get("function_name", "")).lower()
        if name in _DYNAMIC_SQL:
            raise ReadOnlySqlError(f"SQL error: read-only: {name}() runs SQL from a string: refused ({_HINT})")
        if name in _DELTA_SCANS:
            path = _literal(fn.get("children") or [])
            if path is None:
                raise ReadOnlySqlError(f"SQL error: {name}() takes a literal path inside the lake {root}")
            if not _inside(path, root):
                raise ReadOnlySqlError(f"SQL error: {name}({path!r}) is outside the lake {root} ({_HINT})")


def _nodes(tree: Any) -> Iterator[dict[str, Any]]:
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _literal(args: list[Any]) -> str | None:
    first = args[0] if args else None
    if not isinstance(first, dict) or first.get("class") != "CONSTANT":
        return None
    value = first.get("value") or {}
    if value.get("is_null") or (value.get("type") or {}).get("id") != "VARCHAR":
        return None
    return str(value.get("value"))


def _inside(path: str, root: str) -> bool:
    """Whether `path` (a local path, `file://` or object-store URL) names `root` or something under it, once
    `..` and symbolic links are resolved."""
    if "://" in root:
        p, r = urlsplit(path), urlsplit(root)
        if (p.scheme, p.netloc) != (r.scheme, r.netloc):
            return False
        return _under(posixpath.normpath("/" + p.path), posixpath.normpath("/" + r.path))
    if path.startswith("file://"):
        path = urlsplit(path).path
    elif len(urlsplit(path).scheme) > 1:  # a URL (a one-letter scheme is a Windows drive)
        return False
    return _under(os.path.realpath(path), os.path.realpath(root))


def _under(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root if root == "/" else root + "/")
