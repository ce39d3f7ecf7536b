"""`evolora keys ...`: create, list and revoke the service's API keys.

Mounted by cli/main.py with `app.add_typer(keys_app, name="keys")`.
Exit codes: 0 done, 2 an error (cause and fix on stderr).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cli.common import ConfigOption, JsonOption, console, fail, settings_or_exit

if TYPE_CHECKING:
    from storage.store import Store


keys_app = typer.Typer(help="API keys of the service: create, list, revoke.",
                       no_args_is_help=True)


def _open_store(config: str | None) -> Store:
    """The config's store (serving.database_url, default SQLite in paths.data_dir)."""
    from sqlalchemy.exc import SQLAlchemyError

    from storage.store import Store

    settings = settings_or_exit(config)
    try:
        return Store.from_settings(settings)
    except (SQLAlchemyError, OSError) as exc:
        where = settings.serving.database_url or f"{settings.paths.data_dir}/evolora.db"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise fail(f"cannot open the store {where}: {first_line}",
                   "check serving.database_url / paths.data_dir") from None


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="What the key is for, e.g. `laptop`.")],
    user: Annotated[str | None, typer.Option("--user", "-u", help="The user the key acts "
                                             "as; default: NAME.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="May call the admin routes (check "
                                        "the registry now) and load any registered version, "
                                        "even one the gate did not promote.")] = False,
    add_to_user: Annotated[bool, typer.Option(
        "--add-to-user", help="Give an existing user another key (they share that user's "
        "memories and sessions).")] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key and print it once: only its hash is stored."""
    from storage.store import StoreError

    store = _open_store(config)
    user_id = (user or name).strip()
    try:
        # Keys of one user id share its memories, sessions and traces: a second key for a
        # user id in use is only made on purpose, never because two names collide.
        holders = [k for k in store.list_keys() if k.user_id == user_id and not k.revoked_at]
        if holders and not add_to_user:
            raise fail(f"user {user_id!r} already has {len(holders)} live key(s) "
                       f"({', '.join(k.name for k in holders)}); a new key would share their "
                       "data", "pass --user with another user id, or --add-to-user to give "
                       "that user another key")
        plaintext, record = store.create_key(name, user_id, admin=admin)
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    if as_json:
        print(json.dumps({"key": plaintext, **record.to_json()}, indent=2))
        return
    role = "admin" if record.is_admin else "user"
    print(f"created {role} key {record.name!r} for user {record.user_id!r} "
          f"(id {record.id}, prefix evk_{record.prefix})\n\n  {plaintext}\n\n"
          "Copy it now: it cannot be shown again (only its hash is stored).")


@keys_app.command("list")
def keys_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Every key with its prefix, user and state; never the keys themselves."""

    store = _open_store(config)
    try:
        records = store.list_keys()
    finally:
        store.close()
    if as_json:
        print(json.dumps([record.to_json() for record in records], indent=2))
        return
    if not records:
        console.print("no API keys yet; `evolora keys create NAME` makes one", highlight=False)
        return
    table = Table("id", "name", "user", "prefix", "admin", "created", "revoked")
    for record in records:
        table.add_row(record.id, record.name, record.user_id, f"evk_{record.prefix}",
                      "yes" if record.is_admin else "", _when(record.created_at),
                      _when(record.revoked_at))
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    ref: Annotated[str, typer.Argument(help="The key's id or its prefix (as `list` shows).")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke a key: requests with it are refused from now on."""
    from storage.store import StoreError

    store = _open_store(config)
    try:
        record = store.revoke_key(ref)
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    if as_json:
        print(json.dumps(record.to_json(), indent=2))
        return
    print(f"revoked key {record.name!r} (id {record.id}, prefix evk_{record.prefix}, "
          f"user {record.user_id!r}) at {_when(record.revoked_at)}")
