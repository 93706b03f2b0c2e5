"""The bridge's generated cfg text (STUB in the ``conv`` branch).

MERGE: this module is owned by the bridge runtime helper; this stub only has the agreed
signature so the converter can be built and tested. It loads nothing but app_python3 (so a
converted cfg's ``python_exec`` calls pass ``kamailio -c``), routes nothing, and sets the three
``kazoo`` parameters without which kazoo.so does not start once the converter has moved the
cfg's own ones to the TOML (tried on Debian 5.6.3): ``node_hostname`` (mod_init fails without
it; any value, kazoo.so never talks to a broker here), ``pua_mode`` 0 (else every consumer
worker fails child_init with "database not bound" when there is no db_url) and
``amqp_consumer_workers`` 1 (they are forked even with no broker; one idle process is enough).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

__all__ = ["render_includes"]


def render_includes(
    *,
    bridge: str,
    socket_workers: int,
    max_event_bytes: int,
    loaded_modules: frozenset[str],
    original_xhttp_route: str | None,
    resume_routes: Sequence[str],
    toml_name: str,
) -> dict[str, str]:
    """Return ``{"kazoo-amqp-modules.cfg": ..., "kazoo-amqp-routes.cfg": ...,
    "kazoo_amqp_kemi.py": ...}`` for a converted cfg (see docs/kamailio-bridge-design.md).

    ``toml_name`` is the absolute path of the output folder's kazoo-amqp.toml when the CLI
    converts (app_python3 needs the script's absolute path; the script sits next to it).
    """
    load = "" if "app_python3" in loaded_modules else 'loadmodule "app_python3.so"\n'
    script = posixpath.join(posixpath.dirname(toml_name), "kazoo_amqp_kemi.py")
    modules = (
        "# kazoo-amqp bridge: modules (stub, replaced by the bridge runtime)\n"
        'modparam("kazoo", "node_hostname", "kazoo-amqp-bridge")\n'
        'modparam("kazoo", "pua_mode", 0)\n'
        'modparam("kazoo", "amqp_consumer_workers", 1)\n'
        f"{load}"
        f'modparam("app_python3", "load", "{script}")\n'
    )
    routes = (
        "# kazoo-amqp bridge: routes (stub, replaced by the bridge runtime)\n"
        f"# bridge {bridge}, {socket_workers} workers, events up to {max_event_bytes} bytes\n"
        f"# original xhttp route: {original_xhttp_route or '(none)'}\n"
        f"# resume routes: {', '.join(resume_routes) or '(none)'}\n"
    )
    kemi = (
        '"""app_python3 script of the kazoo-amqp bridge (stub)."""\n'
        f"TOML_NAME = {toml_name!r}\n\n\n"
        "class _Stub:\n"
        "    def child_init(self, rank):\n"
        "        return 0\n\n"
        "    def kazoo_call(self, msg, call_id):\n"
        "        return -1\n\n\n"
        "def mod_init():\n"
        "    return _Stub()\n"
    )
    return {
        "kazoo-amqp-modules.cfg": modules,
        "kazoo-amqp-routes.cfg": routes,
        "kazoo_amqp_kemi.py": kemi,
    }
