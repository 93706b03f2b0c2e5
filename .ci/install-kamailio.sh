#!/usr/bin/env bash
# Install Kamailio 5.6 (Debian packages) + sipp + sqlite3 for the e2e tests (presence, and
# app_python3 using kazoo_amqp.Client from KEMI scripts).
#
# Idempotent: does nothing when `kamailio` and `sipp` are already on PATH and every module
# package is present (a missing module package, e.g. kamailio-python3-modules on a machine that
# already had kamailio, is installed).
# Never leaves a packaged (system-service) Kamailio running: service starts are
# blocked during the install with a temporary policy-rc.d, and any instance that
# was started from the packaged config (/etc/kamailio/kamailio.cfg) is stopped by
# PID afterwards. Kamailio instances started by the test harness (run with
# `-f <rundir>/kamailio.cfg`) are never touched.
#
# Exit status: 0 when the tools are present afterwards, and also 0 (with a clear
# message) when the packages cannot be installed here -- the e2e tests then skip.
set -u

# kazoo-modules: kazoo.so (the C module: its transformations for the bridge, and the C side of the
# comparison tests); extra/utils/json: xhttp, htable, dispatcher, ... used by the bridge example.
PKGS=(kamailio kamailio-presence-modules kamailio-sqlite-modules kamailio-postgres-modules
      kamailio-mysql-modules kamailio-python3-modules kamailio-kazoo-modules
      kamailio-extra-modules kamailio-utils-modules kamailio-json-modules sip-tester sqlite3)

log() { echo "install-kamailio: $*"; }

have_tools() { command -v kamailio >/dev/null 2>&1 && command -v sipp >/dev/null 2>&1; }

# The presence/db/app_python3 modules live in separate packages; `kamailio` alone is not enough.
have_modules() {
    local d
    for d in /usr/lib/x86_64-linux-gnu/kamailio/modules /usr/lib/*/kamailio/modules /usr/lib/kamailio/modules; do
        [ -f "$d/presence.so" ] && [ -f "$d/db_sqlite.so" ] && [ -f "$d/presence_dialoginfo.so" ] \
            && [ -f "$d/app_python3.so" ] && [ -f "$d/kazoo.so" ] && [ -f "$d/xhttp.so" ] \
            && [ -f "$d/evapi.so" ] && [ -f "$d/http_client.so" ] && [ -f "$d/pua_json.so" ] \
            && return 0
    done
    return 1
}

# Stop Kamailio processes that belong to the packaged system service (default
# config), by PID. Ours always run with an explicit -f pointing into a run dir.
stop_service_instances() {
    local pid cmd killed=()
    for pid in $(pgrep -x kamailio 2>/dev/null || true); do
        cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
        case " $cmd " in
            *" -f /etc/kamailio/"*|*" -f/etc/kamailio/"*) ;;     # packaged config: service
            *" -f "*|*" -f"*) continue ;;                         # explicit other cfg: not ours to stop
            *) ;;                                                 # no -f: default cfg => service
        esac
        killed+=("$pid")
    done
    if [ ${#killed[@]} -gt 0 ]; then
        log "stopping system-service kamailio instance(s): ${killed[*]}"
        kill -TERM "${killed[@]}" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            local alive=0
            for pid in "${killed[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            [ $alive -eq 0 ] && break
            sleep 0.5
        done
        for pid in "${killed[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    fi
    # Keep it from coming back on a later boot where an init system exists.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now kamailio >/dev/null 2>&1 || true
    fi
    if [ -f /etc/default/kamailio ] && grep -q '^RUN_KAMAILIO=yes' /etc/default/kamailio; then
        sed -i 's/^RUN_KAMAILIO=yes/RUN_KAMAILIO=no/' /etc/default/kamailio || true
    fi
}

if have_tools && have_modules; then
    log "kamailio ($(kamailio -v 2>/dev/null | head -1)) and sipp already installed; nothing to do"
    stop_service_instances
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    log "apt-get not available; cannot install Kamailio/sipp. The kamailio e2e tests will be skipped."
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    log "not root; cannot install Kamailio/sipp. The kamailio e2e tests will be skipped."
    exit 0
fi

# Block service starts from maintainer scripts while installing.
POLICY=/usr/sbin/policy-rc.d
POLICY_CREATED=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY" && chmod 755 "$POLICY" && POLICY_CREATED=1
fi
cleanup() { [ "$POLICY_CREATED" -eq 1 ] && rm -f "$POLICY"; }
trap cleanup EXIT

log "installing: ${PKGS[*]}"
if ! apt-get update -qq; then
    log "apt-get update failed; the kamailio e2e tests will be skipped."
    exit 0
fi
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PKGS[@]}"; then
    log "apt-get install failed (packages unavailable?); the kamailio e2e tests will be skipped."
    stop_service_instances
    exit 0
fi

stop_service_instances

if have_tools && have_modules; then
    log "ok: $(kamailio -v 2>/dev/null | head -1); $(sipp -v 2>&1 | grep -o 'SIPp v[0-9.]*' | head -1)"
else
    log "packages installed but kamailio/sipp/modules still missing; the kamailio e2e tests will be skipped."
fi
exit 0
