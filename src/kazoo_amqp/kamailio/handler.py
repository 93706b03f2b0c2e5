"""The edge module: what the converted cfg's ``python_exec`` calls run (app_python3, KEMI).

Two entry points, both methods of the object ``mod_init()`` returns:

``kazoo_call(msg, call_id)``
    One rewritten ``kazoo_*`` call of the cfg. ``call_id`` names a row of the call table
    (``[kamailio.calls]`` in the daemon config): the operation and the arguments' unexpanded
    text, which is expanded here with Kamailio's own format engine (``KSR.pvx.evalx``), so PVs
    and transformations behave as the C module's ``spve`` parameters did. The return value is
    the C function's: 1 success, negative failure (one log line naming the call site), 0 after
    ``kazoo_async_query`` suspended the transaction (the script stops, as with C).
``kazoo_http(msg)``
    ``event_route[xhttp:request]`` on the bridge socket: the daemon's ``/kazoo/event``,
    ``/kazoo/mod-init`` and ``/kazoo/resume`` requests. The route is run through
    ``KSR.cfgutils.route_if_exists`` so that an ``exit`` inside it ends only that route, and
    the reply goes out after it returned (xhttp never answers by itself).

Rules: one :class:`~kazoo_amqp.ipc.client.Client` per process, created on first use after
Kamailio forked; no threads; every failure is one log line and a negative return, never an
exception into Kamailio.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

from kazoo_amqp.core.kamailio.bridge_cfg import RESUME_ROUTE, ROUTE_SEPARATOR, WATCHDOG_TABLE
from kazoo_amqp.core.kamailio.settings import CallSite
from kazoo_amqp.errors import ConfigError, KazooError, QueryTimeout

__all__ = ["WATCHDOG_GRACE_S", "BridgeHandler"]

#: Seconds added to a query's timeout (rounded up) for its watchdog entry. htable keeps whole
#: seconds and its timer ticks every second, so the entry expires between that many and two
#: more seconds after the suspend: never before the daemon's own timeout answer.
WATCHDOG_GRACE_S = 0
MOD_INIT = "kazoo:mod-init"
_PUA_PACKAGES = {
    "pua_publish": None,
    "pua_publish_dialoginfo": "dialog",
    "pua_publish_mwi": "message-summary",
    "pua_publish_presence": "presence",
}
_TMP = "$var(kzArg)"
# One PV and nothing else (``$var(payload)``, ``$ci``, ``$avp(x)``): read with one KSR.pv.get
# instead of evalx + get. Transformations (``$(var(x){...})``) and text go through evalx.
_ONE_PV = re.compile(r"\$[A-Za-z_][A-Za-z0-9_.]*(\([^(){}$]*\))?")
_LITERAL, _PV, _FORMAT = 0, 1, 2


def _version() -> str:
    from kazoo_amqp import __version__

    return __version__


class BridgeHandler:
    """The app_python3 object of the bridge (see the module docstring).

    Args:
        config_path: the daemon's TOML (the converter's ``kazoo-amqp.toml``).
        routes: for KEMI scripts (``cfgengine "python"``): event-route names
            (``"kazoo:mod-init"``, ``"kazoo:consumer-event-..."``) mapped to Python callables
            taking no argument. Given, the handler runs these instead of cfg routes, continues
            async queries with ``KSR.tmx.t_continue`` into KEMI functions named by the reply /
            timeout route, and serves the watchdog from :meth:`kemi_htable_event`.
        ksr: the ``KSR`` module (injected by tests; imported when None).
        client_factory: builds the per-process client from the socket path (tests inject).
    """

    def __init__(
        self,
        config_path: str,
        *,
        routes: dict[str, Any] | None = None,
        ksr: Any = None,
        client_factory: Any = None,
    ) -> None:
        from kazoo_amqp.core.config import load_config

        if ksr is None:
            import KSR  # type: ignore[import-not-found]  # provided by app_python3

            ksr = KSR
        self.ksr = ksr
        settings = load_config(config_path, default_app_version=_version())
        if settings.kamailio is None:
            raise ConfigError(
                f"{config_path}: has no [kamailio] table; write it with "
                "`kazoo-amqp kamailio-convert IN.cfg --out-dir DIR`"
            )
        self.settings = settings
        self.calls: dict[str, CallSite] = dict(settings.kamailio.calls)
        self.default_timeout_ms = int(settings.amqp_query_timeout * 1000)
        self.timeout_avp = settings.amqp_query_timeout_avp or "$avp(kz_timeout)"
        if client_factory is None:
            from kazoo_amqp.ipc.client import Client

            def client_factory(path: str) -> Any:
                return Client(path)

        self._client_factory = client_factory
        self.kemi_routes = routes
        self._client: Any = None
        self._pid = -1
        self._subscriptions: list[dict[str, Any]] | None = None
        self._kinds: dict[str, int] = {}
        self._exists: dict[str, bool] = {}
        self._ops = {
            "publish": self._publish,
            "query": self._query,
            "async_query": self._async_query,
            "subscribe": self._subscribe,
            **{name: self._pua for name in _PUA_PACKAGES},
        }

    # -- app_python3 hooks -------------------------------------------------------------
    def child_init(self, rank: int) -> int:
        return 0

    def client(self) -> Any:
        if self._pid != os.getpid():
            self._client = self._client_factory(self.settings.socket)
            self._pid = os.getpid()
        return self._client

    # -- kazoo_call ----------------------------------------------------------------------
    def kazoo_call(self, msg: Any, call_id: str) -> int:
        site = self.calls.get(call_id)
        if site is None:
            self._error(
                f"kazoo-amqp: call {call_id!r} is not in the call table of the daemon config; "
                "convert the cfg again with kazoo-amqp kamailio-convert"
            )
            return -1
        try:
            result: int = self._ops[site.op](site)
            return result
        except KazooError as exc:
            self._error(f"kazoo-amqp: {site.op} at {site.where or call_id}: {exc}")
        except Exception as exc:  # a bug: still one line, never an exception into Kamailio
            self._error(
                f"kazoo-amqp: {site.op} at {site.where or call_id} failed: "
                f"{type(exc).__name__}: {exc}"
            )
        return -1

    def _eval(self, text: str) -> str:
        """The argument's value: its text through Kamailio's format engine (``pv_evalx``), or
        one ``KSR.pv.get`` when the text is a single PV (the same value, one call fewer)."""
        kind = self._kinds.get(text)
        if kind is None:
            kind = self._kinds[text] = (
                _LITERAL if "$" not in text else _PV if _ONE_PV.fullmatch(text) else _FORMAT
            )
        if kind == _LITERAL:
            return text
        ksr = self.ksr
        if kind == _PV:
            value = ksr.pv.get(text)
        else:
            if ksr.pvx.evalx(_TMP, text) < 0:
                raise KazooError(f"cannot evaluate {text!r}")
            value = ksr.pv.get(_TMP)
        return "" if value is None else str(value)

    def _timeout_ms(self) -> int:
        value = self.ksr.pv.get(self.timeout_avp)
        try:
            ms = int(value) if value is not None else 0
        except (TypeError, ValueError):
            ms = 0
        return ms if ms > 0 else self.default_timeout_ms

    def _publish(self, site: CallSite) -> int:
        args = [self._eval(a) for a in site.args]
        headers = args[3] if len(args) > 3 and args[3] else None
        client = self.client()
        # Sent without waiting: the SIP worker never waits on the daemon (C: a pipe write).
        client.publish_nowait(args[0], args[1], args[2], headers)
        self._late(client)
        return 1

    def _late(self, client: Any) -> None:
        """Log what the daemon refused of earlier calls sent without waiting."""
        for exc in client.late_errors():
            self._error(f"kazoo-amqp: the daemon refused an earlier publish or query: {exc}")

    def _query(self, site: CallSite) -> int:
        ksr = self.ksr
        # $kzR is null while a query runs and after a failure (C); as $var(kzR) it is "":
        # never 0, which is what an unset $var reads as.
        ksr.pv.sets("$var(kzR)", "")
        exchange, routing_key, payload = (self._eval(a) for a in site.args[:3])
        target = site.target
        headers = self._eval(site.args[3]) if len(site.args) > 3 else ""
        try:
            text = self.client().query(
                exchange,
                routing_key,
                payload,
                timeout_ms=self._timeout_ms(),
                headers=headers or None,
                raw=True,
            )
        except QueryTimeout as exc:
            self._error(f"kazoo-amqp: query at {site.where}: {exc}")
            return -1
        if not isinstance(text, str):
            text = json.dumps(text)
        ksr.pv.sets("$var(kzR)", text)
        if target:
            ksr.pv.sets(target, text)
        return 1

    def _async_query(self, site: CallSite) -> int:
        exchange, routing_key, payload, reply_route, timeout_route = (
            self._eval(a) for a in site.args[:5]
        )
        return self.async_query(
            exchange, routing_key, payload, reply_route, timeout_route, where=site.where
        )

    def async_query(
        self,
        exchange: str,
        routing_key: str,
        payload: str,
        reply_route: str,
        timeout_route: str,
        *,
        timeout_ms: int | None = None,
        where: str = "",
    ) -> int:
        """``kazoo_async_query``: suspend the transaction, arm its watchdog, hand the query to
        the daemon; 0 (stop the script) once suspended, -1 when it could not be suspended.

        KEMI scripts call it directly, with KEMI function names as the routes."""
        ksr = self.ksr
        timeout_ms = timeout_ms or self._timeout_ms()
        if ksr.tmx.t_suspend() < 0:
            self._error(f"kazoo-amqp: async_query at {where}: cannot suspend the transaction")
            return -1
        tindex = int(ksr.pv.get("$T(id_index)") or 0)
        tlabel = int(ksr.pv.get("$T(id_label)") or 0)
        key = f"{tindex}:{tlabel}"
        ksr.htable.sht_sets(WATCHDOG_TABLE, key, timeout_route)
        ksr.htable.sht_setex(WATCHDOG_TABLE, key, math.ceil(timeout_ms / 1000) + WATCHDOG_GRACE_S)
        resume = {
            "tindex": tindex,
            "tlabel": tlabel,
            "reply_route": reply_route,
            "timeout_route": timeout_route,
        }
        try:
            # Sent without waiting: a query the daemon refuses goes to the timeout route from
            # there, at once.
            self.client().async_query(exchange, routing_key, payload, resume, timeout_ms=timeout_ms)
        except KazooError as exc:
            # The transaction is suspended already: let the watchdog take it to the timeout
            # route at its next tick instead of after the whole timeout.
            ksr.htable.sht_setex(WATCHDOG_TABLE, key, 1)
            self._error(f"kazoo-amqp: async_query at {where}: {exc}; running {timeout_route}")
        return 0

    def subscribe(self, *args: str) -> int:
        """``kazoo_subscribe`` (JSON text, or exchange, type, queue, routing key) for KEMI
        scripts: only inside their ``kazoo:mod-init`` route."""
        return self._subscribe(CallSite("subscribe", tuple(args), "KEMI"), evaluate=False)

    def _subscribe(self, site: CallSite, *, evaluate: bool = True) -> int:
        if self._subscriptions is None:
            self._error(
                f"kazoo-amqp: kazoo_subscribe at {site.where} outside kazoo:mod-init is ignored"
            )
            return -1
        args = [self._eval(a) for a in site.args] if evaluate else list(site.args)
        entry: dict[str, Any] = {"json": args[0]} if len(args) == 1 else {"args": args}
        entry["where"] = site.where
        self._subscriptions.append(entry)
        return 1

    def _pua(self, site: CallSite) -> int:
        payload = self._eval(site.args[0])
        self.client().pua_publish(payload, _PUA_PACKAGES[site.op])
        return 1

    # -- kazoo_http --------------------------------------------------------------------
    def kazoo_http(self, msg: Any) -> int:
        ksr = self.ksr
        path = str(ksr.pv.get("$hu") or "")
        try:
            if path == "/kazoo/event":
                self._event()
            elif path == "/kazoo/resume":
                self._resume()
            elif path == "/kazoo/mod-init":
                self._mod_init()
            else:
                ksr.xhttp.xhttp_reply(404, "Not Found", "text/plain", "")
        except Exception as exc:
            self._error(f"kazoo-amqp: bridge request {path}: {type(exc).__name__}: {exc}")
            ksr.xhttp.xhttp_reply(500, "Bridge Error", "text/plain", str(exc))
        return 1

    def _route_exists(self, name: str) -> bool:
        """Whether the cfg (or the KEMI table) has route ``name``; cached: a Kamailio
        process's routes never change (a new cfg is a restart)."""
        if self.kemi_routes is not None:
            return name in self.kemi_routes
        known = self._exists.get(name)
        if known is None:
            known = self._exists[name] = bool(self.ksr.cfgutils.check_route_exists(name) > 0)
        return known

    def _run_route(self, name: str) -> None:
        if self.kemi_routes is not None:
            try:
                self.kemi_routes[name]()
            except Exception as exc:  # the route's own bug: logged, the answer still goes out
                self._error(f"kazoo-amqp: KEMI route {name}: {type(exc).__name__}: {exc}")
            return
        # From KEMI, `exit` inside the cfg route ends only that route.
        self.ksr.cfgutils.route_if_exists(name)

    def _header(self, name: str) -> str:
        value = self.ksr.pv.get(f"$hdr({name})")
        return "" if value is None else str(value)

    def _event(self) -> None:
        ksr = self.ksr
        # The daemon's candidates, most specific first (§4.3 over kamailio.routes); that list
        # may name routes inside #!ifdef branches not taken, so run the first that exists.
        wanted = self._header("X-Kazoo-Route")
        route = next(
            (n for n in wanted.split(ROUTE_SEPARATOR) if n and self._route_exists(n)), None
        )
        if route is None:
            ksr.xhttp.xhttp_reply(404, "No Route", "text/plain", wanted)
            return
        ksr.pv.sets("$var(kzE)", str(ksr.pv.get("$rb") or ""))
        routing_key = self._header("X-Kazoo-Routing-Key")
        if routing_key:
            ksr.pv.sets("$var(kzRK)", routing_key)
        else:
            ksr.pv.unset("$var(kzRK)")
        self._run_route(route)
        ksr.pv.unset("$var(kzE)")
        ksr.pv.unset("$var(kzRK)")
        ksr.xhttp.xhttp_reply(200, "OK", "text/plain", "")

    def _mod_init(self) -> None:
        ksr = self.ksr
        self._subscriptions = []
        try:
            if self._route_exists(MOD_INIT):
                self._run_route(MOD_INIT)
            body = json.dumps(self._subscriptions)
        finally:
            self._subscriptions = None
        ksr.xhttp.xhttp_reply(200, "OK", "application/json", body)

    def _resume(self) -> None:
        ksr = self.ksr
        tindex = int(self._header("X-Kazoo-TIndex") or 0)
        tlabel = int(self._header("X-Kazoo-TLabel") or 0)
        route = self._header("X-Kazoo-Resume-Route")
        key = f"{tindex}:{tlabel}"
        if ksr.htable.sht_is_null(WATCHDOG_TABLE, key) > 0:
            # The watchdog continued it already (the daemon answered too late), or unknown.
            ksr.xhttp.xhttp_reply(410, "Gone", "text/plain", key)
            return
        ksr.htable.sht_rm(WATCHDOG_TABLE, key)
        # the reply, or "" on timeout (C: null; an unset $var would read 0)
        ksr.pv.sets("$var(kzR)", str(ksr.pv.get("$rb") or ""))
        self._continue(tindex, tlabel, route)
        ksr.xhttp.xhttp_reply(200, "OK", "text/plain", "")

    def _continue(self, tindex: int, tlabel: int, route: str) -> None:
        ksr = self.ksr
        if self.kemi_routes is not None:  # KEMI: the route is a KEMI function's name
            ksr.tmx.t_continue(tindex, tlabel, route)
            return
        ksr.pv.seti("$var(kzTI)", tindex)
        ksr.pv.seti("$var(kzTL)", tlabel)
        ksr.pv.sets("$var(kzRN)", route)
        ksr.cfgutils.route_if_exists(RESUME_ROUTE)

    def kemi_htable_event(self, msg: Any, evname: str) -> int:
        """The watchdog for KEMI scripts: call it from htable's ``event_callback`` function
        (``modparam("htable", "event_callback", "ksr_htable_event")``)."""
        if evname != f"htable:expired:{WATCHDOG_TABLE}":
            return 1
        ksr = self.ksr
        key = str(ksr.pv.get("$shtrecord(key)") or "")
        route = str(ksr.pv.get("$shtrecord(value)") or "")
        tindex, _, tlabel = key.partition(":")
        self._error(f"kazoo-amqp: no answer for {key}, running {route}")
        ksr.pv.sets("$var(kzR)", "")
        ksr.tmx.t_continue(int(tindex or 0), int(tlabel or 0), route)
        return 1

    def _error(self, text: str) -> None:
        self.ksr.err(" ".join(text.split()) + "\n")
