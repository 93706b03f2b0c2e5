"""``kazoo_pua_publish``: JSON update -> presentity row -> optional Kamailio refresh.

One ``PresenceService`` per process (each worker, the daemon's writer thread, the CLI). The pure
decisions (which row, which body) are ``core.presence``; this module only carries them out:
write the row in one short transaction, then, when ``kamailio_rpc`` is configured, call
``presence.refreshWatchers(uri, event, 1)`` so watchers get their NOTIFY.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from kazoo_amqp.core import jsonc
from kazoo_amqp.core.presence.model import PresentityUpdate
from kazoo_amqp.core.presence.presentity import PACKAGES, build_update, dispatch
from kazoo_amqp.errors import KazooError, UsageError
from kazoo_amqp.presence.dburl import parse_db_url
from kazoo_amqp.presence.notify import KamailioRpc
from kazoo_amqp.presence.writer import PresentityWriter
from kazoo_amqp.presence.writer import init_database as _init_database

log = logging.getLogger("kazoo_amqp.presence")


class PresenceService:
    """Builds, writes and announces presentity updates."""

    def __init__(
        self,
        *,
        open_writer: Callable[[], PresentityWriter],
        rpc: KamailioRpc | None,
        include_entity: bool = True,
        enabled: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._open_writer = open_writer
        self._writer: PresentityWriter | None = None
        self.rpc = rpc
        self.include_entity = include_entity
        self.enabled = enabled
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Any) -> PresenceService:
        url = parse_db_url(settings.db_url)
        # The default SQLite file next to the config belongs to us: create it on first use.
        # Any other database must have been prepared (`kazoo-amqp db init`) or by Kamailio.
        init = url.kind == "sqlite" and not os.path.exists(getattr(url, "path", "") or "")
        rpc = KamailioRpc(settings.kamailio_rpc) if settings.kamailio_rpc else None
        return cls(
            open_writer=lambda: PresentityWriter.open(
                url, table=settings.presentity_table, lock_type=settings.pua_lock_type, init=init
            ),
            rpc=rpc,
            include_entity=bool(settings.pua_include_entity),
            enabled=settings.pua_mode == 1,
        )

    def build(
        self, payload: Mapping[str, Any] | str | bytes, package: str | None
    ) -> PresentityUpdate | None:
        """The update for ``payload`` (None when kazoo_pua_publish's dispatch does not apply)."""
        if not self.enabled:
            raise UsageError("kazoo_pua_publish is disabled (pua_mode != 1): set pua_mode = 1")
        doc = payload if isinstance(payload, Mapping) else jsonc.loads_object(payload)
        now = int(self.clock())
        if package is None:
            return dispatch(doc, now=now, include_entity=self.include_entity)
        if package not in PACKAGES:
            raise UsageError(f"unknown presence package {package!r}: use one of {PACKAGES}")
        return build_update(package, doc, now=now, include_entity=self.include_entity)

    def publish(
        self, payload: Mapping[str, Any] | str | bytes, package: str | None = None
    ) -> dict[str, Any]:
        """Write one update (and refresh watchers); return what was written."""
        update = self.build(payload, package)
        if update is None:
            return {
                "written": False,
                "reason": "not an update: Event-Name must be 'update' and Event-Package one "
                "of presence, dialog, message-summary (use a per-package call to "
                "skip this check)",
            }
        self.write([update])
        return self._result(update, self.refresh(update))

    def write(self, updates: list[PresentityUpdate]) -> None:
        if self._writer is None:
            self._writer = self._open_writer()
        self._writer.write(updates)

    def refresh(self, update: PresentityUpdate) -> str | None:
        """Ask Kamailio to NOTIFY the watchers; returns the error text, or None on success."""
        if self.rpc is None:
            return "no kamailio_rpc configured"
        try:
            self.rpc.refresh_watchers(update.presentity_uri, update.event)
            return None
        except KazooError as exc:
            log.warning(
                "row for %s (%s) written, but refreshing watchers failed: %s",
                update.presentity_uri,
                update.event,
                exc,
            )
            return str(exc)

    @staticmethod
    def _result(update: PresentityUpdate, refresh_error: str | None) -> dict[str, Any]:
        result: dict[str, Any] = {
            "written": True,
            "package": update.event,
            "presentity": update.presentity_uri,
            "etag": update.etag,
            "expires": update.expires,
            "refreshed": refresh_error is None,
        }
        if refresh_error is not None:
            result["refresh_error"] = refresh_error
        return result

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.rpc is not None:
            self.rpc.close()


def init_database(settings: Any) -> bool:
    """``kazoo-amqp db init``: create Kamailio's presentity schema where it is missing."""
    return _init_database(settings.db_url, settings.presentity_table)
