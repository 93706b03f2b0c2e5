"""Shared helpers of the kazoo-amqp benchmarks (not a test module; no pytest here).

* ``Daemon``: runs ``python -m kazoo_amqp run`` with a generated config and routes file in a temp
  directory (the same approach as the integration harness, written again here so ``bench/`` does
  not import from ``tests/``), waits until its socket answers and the broker is up, stops it with
  SIGTERM.
* broker helpers on pika (declare / passive depth / delete), unique names, the Kazoo-style payload
  of the C harness (same field set), a bulk publisher on our own protocol for prefilling queues.
* ``Sampler``: CPU seconds per process group from ``/proc/PID/stat`` (utime + stime, all threads),
  RSS and PSS from ``/proc/PID/smaps_rollup``, and the whole machine's busy time from
  ``/proc/stat`` so the noise from other people's processes on the shared box is visible.
* ``Profiler``: ``py-spy record`` of a pid for a while, aggregated into the top functions.
* statistics, tables, ``save_result`` (``bench/results/<name>.json``).

Everything is bounded: every wait has a deadline, every load a message count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
PY = sys.executable


def _resolve_src() -> Path:
    """Which kazoo_amqp the benchmarks run: ``KZBENCH_SRC`` = ``live`` (default: the working
    tree's ``src/``), ``head`` or a commit (that commit's ``src/``, extracted once with
    ``git archive`` into /tmp, so edits other people make while a run is going on do not change
    what is measured), or a directory holding ``kazoo_amqp``."""
    mode = os.environ.get("KZBENCH_SRC", "live")
    if mode == "live":
        return REPO / "src"
    if os.path.isdir(mode):
        return Path(mode).resolve()
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12",
                          "HEAD" if mode == "head" else mode],
                         capture_output=True, text=True, check=True).stdout.strip()
    dest = Path(tempfile.gettempdir()) / f"kzbench-src-{sha}"
    if not (dest / "src" / "kazoo_amqp").is_dir():
        tmp = Path(tempfile.mkdtemp(prefix="kzbench-src-tmp-"))
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, "src"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        if not dest.exists():
            tmp.rename(dest)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    os.environ["KZBENCH_SRC"] = str(dest / "src")  # children resolve to the same tree
    return dest / "src"


SRC = _resolve_src()
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

AMQP_HOST = "127.0.0.1"
AMQP_PORT = 5672
AMQP_USER = "guest"
AMQP_PASSWORD = "guest"
AMQP_URL = f"amqp://{AMQP_USER}:{AMQP_PASSWORD}@{AMQP_HOST}:{AMQP_PORT}"
PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The C module's published numbers (/work/shared/bench/c-module/RESULTS.md, median of 3).
C_NUMBERS = {
    "publish_p4_broker_msg_s": 14706,
    "publish_p1_broker_msg_s": 10314,
    "query_c1_p50_ms_in_route": 0.937,
    "query_c1_p50_ms_rtt": 1.179,
    "query_c32_req_s": 1882,
    "responder_capacity_pika": 8915,
    "consume_noack_ev_s": 31685,
    "consume_ack_ev_s": 23300,
    "memory_pss_idle_mb": 16.0,
    "memory_pss_peak_mb": 18.7,
    "memory_rss_sum_mb": 107.0,
}


def log(*args: Any) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def unique(prefix: str) -> str:
    return f"kzb-{prefix}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- payloads
def kazoo_event(i: int, category: str = "bench", name: str = "consume") -> dict[str, Any]:
    """The C harness's Kazoo-style dialog event (same field set, ~300 bytes compact)."""
    return {
        "Event-Category": category,
        "Event-Name": name,
        "Call-ID": f"{i:08d}-a1b2c3d4e5f6@kzbench.local",
        "From": "sip:1001@bench.local",
        "To": "sip:1002@bench.local",
        "From-Tag": f"ft-{i:08d}",
        "To-Tag": f"tt-{i:08d}",
        "State": "early",
        "Direction": "initiator",
        "Expires": 3600,
        "Event-Package": "dialog",
        "Switch-URI": "sip:127.0.0.1:5060",
    }


def compact(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def wire_body(i: int, category: str = "bench", name: str = "consume") -> bytes:
    """A body shaped like what the C module puts on the wire: json-c spacing plus the fields it
    adds (App-Name, App-Version, Node, Msg-ID, Server-ID); ~500 bytes."""
    d = kazoo_event(i, category, name)
    d.update({
        "App-Name": "kamailio", "App-Version": "5.6.3", "Node": "kamailio@bench.local",
        "Msg-ID": str(uuid.UUID(int=i)),
        "Server-ID": f"kamailio@bench.local-<1>-targeted-{i % 50}",
    })
    return ("{ " + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in d.items())
            + " }").encode()


# --------------------------------------------------------------------------- broker (pika)
def pika_conn() -> Any:
    import pika

    return pika.BlockingConnection(pika.ConnectionParameters(
        host=AMQP_HOST, port=AMQP_PORT, heartbeat=0, blocked_connection_timeout=60,
        credentials=pika.PlainCredentials(AMQP_USER, AMQP_PASSWORD)))


class Broker:
    """A pika connection for setup, depth polling and cleanup of the names it declared."""

    def __init__(self) -> None:
        self.conn = pika_conn()
        self.ch = self.conn.channel()
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def _channel(self) -> Any:
        if not self.ch.is_open:
            self.ch = self.conn.channel()
        return self.ch

    def exchange(self, name: str, kind: str = "topic") -> str:
        # the flags the daemon uses for subscription exchanges by default (durable=0, auto_delete=0)
        self._channel().exchange_declare(name, kind, durable=False, auto_delete=False)
        if name not in self.exchanges:
            self.exchanges.append(name)
        return name

    def exchange_targeted(self) -> None:
        """``targeted`` (direct, non-durable, as the daemon and the C module declare it). Shared
        with every other Kazoo node on the broker, so it is never deleted by ``cleanup``."""
        self._channel().exchange_declare("targeted", "direct", durable=False, auto_delete=False)

    def queue(self, name: str, *, exchange: str | None = None, keys: Iterable[str] = ("#",),
              auto_delete: bool = False, purge: bool = True) -> str:
        ch = self._channel()
        ch.queue_declare(name, durable=False, auto_delete=auto_delete, exclusive=False)
        if exchange:
            for key in keys:
                ch.queue_bind(name, exchange, key)
        if purge:
            ch.queue_purge(name)
        if name not in self.queues:
            self.queues.append(name)
        return name

    def bind(self, queue: str, exchange: str, key: str) -> None:
        self._channel().queue_bind(queue, exchange, key)

    def depth(self, queue: str) -> int:
        return int(self._channel().queue_declare(queue, passive=True).method.message_count)

    def consumers(self, queue: str) -> int:
        return int(self._channel().queue_declare(queue, passive=True).method.consumer_count)

    def purge(self, queue: str) -> None:
        self._channel().queue_purge(queue)

    def wait_depth(self, queue: str, target: int, timeout: float, poll: float = 0.02,
                   above: bool = True) -> tuple[float | None, int]:
        """Poll until depth >= target (or <= target when ``above`` is False)."""
        deadline = time.monotonic() + timeout
        d = -1
        while time.monotonic() < deadline:
            d = self.depth(queue)
            if (d >= target) if above else (d <= target):
                return time.perf_counter(), d
            time.sleep(poll)
        return None, d

    def cleanup(self) -> None:
        for q in self.queues:
            try:
                self._channel().queue_delete(q)
            except Exception:
                pass
        for e in self.exchanges:
            try:
                self._channel().exchange_delete(e)
            except Exception:
                pass
        self.queues.clear()
        self.exchanges.clear()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def bulk_publish(exchange: str, routing_key: str, bodies: list[bytes], count: int,
                 timeout: float = 120.0) -> float:
    """Publish ``count`` messages (cycling ``bodies``) with our own protocol client and publisher
    confirms, pipelined 2,000 deep; returns the seconds it took. Used to prefill queues."""
    from kazoo_amqp.amqp.connection import Connection

    async def run() -> float:
        conn = await Connection.connect(host=AMQP_HOST, port=AMQP_PORT, user=AMQP_USER,
                                        password=AMQP_PASSWORD, name="kzbench prefill")
        try:
            ch = await conn.channel(confirms=True)
            t0 = time.perf_counter()
            window: list[Any] = []
            nb = len(bodies)
            async with asyncio.timeout(timeout):
                for i in range(count):
                    window.append(ch.publish(exchange, routing_key, bodies[i % nb]))
                    if len(window) >= 2000:
                        await asyncio.gather(*window)
                        window.clear()
                if window:
                    await asyncio.gather(*window)
            return time.perf_counter() - t0
        finally:
            await conn.close()

    return asyncio.run(run())


def rabbit_pid() -> int | None:
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/comm") as f:
                if f.read().strip() != "beam.smp":
                    continue
            with open(f"/proc/{p}/cmdline", "rb") as g:
                if b"rabbit" in g.read():
                    return int(p)
        except OSError:
            pass
    return None


# --------------------------------------------------------------------------- /proc
def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    fields = s[s.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def mem_kb(pid: int) -> tuple[int | None, int | None]:
    """(RSS kB, PSS kB) from smaps_rollup."""
    rss = pss = None
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def children_of(pid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
        except OSError:
            continue
        if int(s[s.rindex(")") + 2:].split()[1]) == pid:
            out.append(int(p))
    return sorted(out)


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts[:8]]
    idle = vals[3] + vals[4]
    total = sum(vals)
    return total - idle, total


class Sampler:
    """CPU seconds per group over a window, plus peak memory of the groups in ``mem_groups``."""

    def __init__(self, groups: dict[str, list[int]],
                 mem_groups: Iterable[str] = ("manager", "workers")) -> None:
        self.groups = {g: [p for p in pids if p] for g, pids in groups.items()}
        self.groups.setdefault("driver", [os.getpid()])  # this bench process (polling)
        self.mem_groups = tuple(mem_groups)
        self.c0: dict[int, float | None] = {}
        self.t0 = 0.0
        self.m0 = (0, 0)
        self.peak: dict[str, Any] = {}

    def start(self) -> Sampler:
        self.t0 = time.perf_counter()
        self.c0 = {p: cpu_seconds(p) for pids in self.groups.values() for p in pids}
        self.m0 = machine_jiffies()
        return self

    def memory(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        total_rss = total_pss = 0
        for g in self.mem_groups:
            rss_sum = pss_sum = 0
            per = []
            for p in self.groups.get(g, []):
                rss, pss = mem_kb(p)
                if rss is None:
                    continue
                rss_sum += rss
                pss_sum += pss or 0
                per.append({"pid": p, "rss_kb": rss, "pss_kb": pss})
            out[g] = {"rss_kb": rss_sum, "pss_kb": pss_sum, "procs": per}
            total_rss += rss_sum
            total_pss += pss_sum
        out["total_rss_kb"] = total_rss
        out["total_pss_kb"] = total_pss
        return out

    def sample_peak(self) -> None:
        m = self.memory()
        if m["total_rss_kb"] > self.peak.get("total_rss_kb", -1):
            self.peak = m

    def stop(self) -> dict[str, Any]:
        dt = time.perf_counter() - self.t0
        busy1, _ = machine_jiffies()
        cpu: dict[str, float] = {}
        for g, pids in self.groups.items():
            s = 0.0
            for p in pids:
                c1, c0 = cpu_seconds(p), self.c0.get(p)
                if c1 is not None and c0 is not None:
                    s += c1 - c0
            cpu[g] = round(s, 3)
        busy_s = (busy1 - self.m0[0]) / CLK_TCK
        ncpu = os.cpu_count() or 1
        ours = sum(cpu.values())
        return {
            "wall_s": round(dt, 3),
            "cpu_s": cpu,
            "cpu_pct": {g: round(100 * v / dt, 1) for g, v in cpu.items()} if dt else {},
            "machine_busy_pct": round(100 * busy_s / dt / ncpu, 1) if dt else None,
            "others_cpu_s": round(max(0.0, busy_s - ours), 3),
        }


def add_reported_cpu(cpu: dict[str, Any], group: str, seconds: list[float]) -> None:
    """Put CPU seconds that processes measured themselves (``time.process_time()`` between GO and
    their end; they exit before the sampler stops) into ``cpu`` as ``group``."""
    total = round(sum(seconds), 3)
    cpu["cpu_s"][group] = total
    if cpu.get("wall_s"):
        cpu["cpu_pct"][group] = round(100 * total / cpu["wall_s"], 1)
    cpu["others_cpu_s"] = round(max(0.0, cpu["others_cpu_s"] - total), 3)


def per_op_us(cpu: dict[str, Any], n: int) -> dict[str, float]:
    if not n:
        return {}
    return {g: round(v * 1e6 / n, 1) for g, v in cpu["cpu_s"].items()}


# --------------------------------------------------------------------------- the daemon
def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _toml(cfg: dict[str, Any]) -> str:
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in cfg.items())


ROUTES_PRELUDE = '''\
import os, struct, time
from kazoo_amqp import Router
router = Router()
HERE = os.path.dirname(os.path.abspath(__file__))
'''


class Daemon:
    """One kazoo-amqp daemon with a generated config and routes file in its own temp dir."""

    def __init__(self, routes: str, *, workers: int = 4, config: dict[str, Any] | None = None,
                 name: str = "bench", keep: bool = False, run_args: tuple[str, ...] = ()) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"kzbench-{name}-"))
        self.run_args = run_args
        self.keep = keep
        self.node = f"{unique(name)}.bench.local"
        self.routes_path = self.dir / "routes.py"
        self.routes_path.write_text(ROUTES_PRELUDE + textwrap.dedent(routes))
        self.socket = str(self.dir / "kz.sock")
        cfg: dict[str, Any] = {
            "node_hostname": self.node,
            "amqp_connection": [AMQP_URL],
            "amqp_consumer_processes": workers,
            "routes": "routes.py",
            "socket": self.socket,
            "db_url": f"sqlite:///{self.dir / 'presence.db'}",
            "log_level": "info",
        }
        cfg.update(config or {})
        self.config = cfg
        self.config_path = self.dir / "kazoo-amqp.toml"
        self.config_path.write_text(_toml(cfg))
        self.log_path = self.dir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.started_mono = 0.0
        self._log: Any = None

    def env(self) -> dict[str, str]:
        return child_env()

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PY, "-m", "kazoo_amqp", *args], cwd=self.dir, env=self.env(),
                              capture_output=True, text=True, timeout=timeout)

    def launch(self) -> Daemon:
        """Start the process and return at once (``start`` also waits until it is ready)."""
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.started_at = time.perf_counter()
        self.started_mono = time.monotonic()
        self.proc = subprocess.Popen(
            [PY, "-m", "kazoo_amqp", "run", "--config", str(self.config_path), *self.run_args],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.dir,
        )
        return self

    def children(self, count: int, timeout: float = 20.0) -> list[int]:
        """The pids of the worker processes, found in /proc (works before the socket answers)."""
        deadline = time.monotonic() + timeout
        found: list[int] = []
        while time.monotonic() < deadline:
            found = children_of(self.pid)
            if len(found) >= count:
                return found
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.logs()}")
            time.sleep(0.01)
        raise RuntimeError(f"found {len(found)} of {count} workers in {timeout}s")

    def start(self, timeout: float = 30.0) -> Daemon:
        from kazoo_amqp import Client

        self.launch()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.logs()}")
            if os.path.exists(self.socket):
                try:
                    with Client(self.socket, timeout=2.0) as c:
                        st = c.status()
                    up = any(b["up"] for b in st["manager"]["brokers"])
                    alive = all(w["alive"] for w in st["workers"]["workers"])
                    if up and alive:
                        return self
                except Exception:
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"daemon not ready in {timeout}s:\n{self.logs()}")

    def status(self) -> dict[str, Any]:
        from kazoo_amqp import Client

        with Client(self.socket, timeout=5.0) as c:
            result: dict[str, Any] = c.status()
            return result

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.status()["workers"]["workers"] if w["pid"]]

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_errors(self) -> list[str]:
        return [line for line in self.logs().splitlines()
                if " ERROR " in line or "Traceback" in line][:20]

    def stop(self, timeout: float = 30.0) -> int | None:
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            code = self.proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def remove(self) -> None:
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- child processes
class Child:
    """A helper process: prints READY, waits for GO on stdin, prints one JSON line at the end."""

    def __init__(self, args: list[str], name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen([PY, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env=child_env())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name} exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            if line.strip() == "READY":
                return
        raise RuntimeError(f"{self.name} not ready in {timeout}s")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("GO\n")
        self.proc.stdin.flush()

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise RuntimeError(f"{self.name} did not finish in {timeout}s: {err[-2000:]}") from None
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"{self.name} gave no result (rc={self.proc.returncode}): "
                               f"{err[-3000:]}")
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_go() -> None:
    print("READY", flush=True)
    line = sys.stdin.readline()
    if line.strip() != "GO":
        sys.exit(2)


# --------------------------------------------------------------------------- profiling
class Profiler:
    """``py-spy record`` on one pid for ``seconds``; ``summary()`` gives the top functions."""

    def __init__(self, pid: int, label: str, seconds: float, rate: int = 250) -> None:
        self.pid = pid
        self.label = label
        self.seconds = seconds
        fd, self.path = tempfile.mkstemp(prefix=f"kzbench-pyspy-{label}-", suffix=".txt")
        os.close(fd)
        exe = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
        self.available = os.path.exists(exe)
        self.proc: subprocess.Popen[bytes] | None = None
        if self.available:
            self.proc = subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--duration", str(int(max(1, seconds))),
                 "--rate", str(rate), "--format", "raw", "--nolineno", "--output", self.path,
                 *([] if os.environ.get("KZBENCH_PYSPY_BLOCKING") else ["--nonblocking"])],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(self.seconds + 30)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(10)

    def summary(self, top: int = 20) -> dict[str, Any]:
        self.wait()
        if not self.available:
            return {"error": "py-spy not installed (.venv/bin/pip install py-spy)"}
        try:
            text = Path(self.path).read_text(errors="replace")
        except OSError as exc:
            return {"error": str(exc)}
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        return summarize_stacks(text, top=top) | {"pid": self.pid, "label": self.label}


class PerfStat:
    """``perf stat`` counting syscalls and context switches of ``pids`` until ``stop()``.

    Kernel-side counting (tracepoint ``raw_syscalls:sys_enter``), so the processes are not slowed
    the way strace would; gives syscalls and context switches per message."""

    EVENTS = "raw_syscalls:sys_enter,context-switches"

    def __init__(self, pids: list[int], label: str) -> None:
        self.label = label
        self.pids = [p for p in pids if p]
        exe = shutil.which("perf")
        self.proc: subprocess.Popen[str] | None = None
        if exe and self.pids:
            self.proc = subprocess.Popen(
                [exe, "stat", "-x", ",", "-e", self.EVENTS, "-p", ",".join(map(str, self.pids))],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def stop(self) -> dict[str, Any]:
        if self.proc is None:
            return {"error": "perf not available"}
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        out: dict[str, Any] = {"label": self.label, "pids": self.pids}
        for line in err.splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[0].strip().isdigit():
                out[parts[2]] = int(parts[0])
        return out


def _frame_name(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "file.py:func" with the path shortened to the package
    frame = frame.strip()
    if frame.endswith(")") and " (" in frame:
        func, loc = frame[:-1].rsplit(" (", 1)
        path = loc.rsplit(":", 1)[0]
        if "/kazoo_amqp/" in path:
            path = "kazoo_amqp/" + path.split("/kazoo_amqp/", 1)[1]
        elif "/site-packages/" in path:
            path = path.split("/site-packages/", 1)[1]
        elif "/lib/python3" in path:
            path = "stdlib/" + path.split("/lib/python3", 1)[1].split("/", 1)[-1]
        return f"{path}:{func}"
    return frame


#: Leaf frames where a process waits (or pays its wake-up/syscall cost) rather than computes.
WAIT_LEAVES = ("selectors.py:EpollSelector.select", "kazoo_amqp/workers/child.py:Worker.serve",
               "psycopg/connection.py:Connection.wait")


def summarize_stacks(text: str, top: int = 20) -> dict[str, Any]:
    """Self (leaf) and inclusive sample shares per function from py-spy's collapsed stacks.

    Shares are of all samples py-spy took (it skips threads it sees idle, so they are roughly
    on-CPU samples; a leaf in ``WAIT_LEAVES`` is the epoll/recv syscall and the wake-up around it).
    ``inclusive`` leaves out the entry frames (those in more than 90 % of the samples).
    ``stacks`` keeps the 400 most frequent stacks (leaf-most 12 frames) for later analysis.
    """
    self_c: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    stacks: dict[str, int] = {}
    for line in text.splitlines():
        line = line.rstrip()
        if not line or " " not in line:
            continue
        stack, _, count_s = line.rpartition(" ")
        try:
            count = int(count_s)
        except ValueError:
            continue
        frames = [_frame_name(f) for f in stack.split(";")]
        # drop the "process/thread" pseudo frames py-spy puts first
        frames = [f for f in frames if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        self_c[leaf] = self_c.get(leaf, 0) + count
        for f in set(frames):
            incl[f] = incl.get(f, 0) + count
        key = ";".join(frames[-12:])
        stacks[key] = stacks.get(key, 0) + count
    if not total:
        return {"samples": 0, "self": [], "inclusive": []}

    def pct(d: dict[str, int], limit: int) -> list[list[Any]]:
        return [[k, round(100 * v / total, 1)] for k, v in
                sorted(d.items(), key=lambda kv: -kv[1])[:limit]]

    waiting = sum(v for k, v in self_c.items() if k in WAIT_LEAVES)
    return {"samples": total, "wait_leaf_pct": round(100 * waiting / total, 1),
            "self": pct(self_c, top),
            "inclusive": pct({k: v for k, v in incl.items() if v <= 0.9 * total}, top),
            "stacks": dict(sorted(stacks.items(), key=lambda kv: -kv[1])[:400])}


def print_profile(p: dict[str, Any], n: int = 10) -> None:
    if p.get("error") or not p.get("samples"):
        log("profile", p.get("label"), p.get("error") or "no samples")
        return
    print(f"\n  py-spy {p['label']} (pid {p['pid']}, {p['samples']} samples, "
          f"{p.get('wait_leaf_pct')}% in epoll/recv leaves): top self time")
    for name, share in p["self"][:n]:
        print(f"    {share:5.1f}%  {name}")
    print("  inclusive (entry frames left out):")
    for name, share in p["inclusive"][:n]:
        print(f"    {share:5.1f}%  {name}")


# --------------------------------------------------------------------------- stats / output
def percentile(sorted_vals: list[float], p: float) -> float | None:
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, round(p / 100.0 * len(sorted_vals) + 0.5) - 1))
    return sorted_vals[k]


def lat_summary(vals_ms: list[float]) -> dict[str, Any]:
    s = sorted(vals_ms)
    if not s:
        return {}
    return {"n": len(s), "p50": round(percentile(s, 50) or 0, 3),
            "p90": round(percentile(s, 90) or 0, 3), "p99": round(percentile(s, 99) or 0, 3),
            "max": round(s[-1], 3), "mean": round(sum(s) / len(s), 3)}


def mmm(vals: Iterable[float | None]) -> dict[str, Any] | None:
    v = [x for x in vals if x is not None]
    if not v:
        return None
    return {"median": round(statistics.median(v), 3), "min": round(min(v), 3),
            "max": round(max(v), 3), "runs": [round(x, 3) for x in v]}


def fmt(x: Any, digits: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, dict) and "median" in x:
        if len(x["runs"]) > 1:
            lo, hi = fmt(x["min"], digits), fmt(x["max"], digits)
            return f"{fmt(x['median'], digits)} [{lo} .. {hi}]"
        return fmt(x["median"], digits)
    if isinstance(x, float | int):
        return f"{x:,.{digits}f}"
    return str(x)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
            for r in cells]
    return "\n".join([line, sep, *body])


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem_gb = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    rabbit = None
    with contextlib.suppress(Exception):
        out = subprocess.run(["rabbitmqctl", "-q", "eval", "rabbit_misc:version()."],
                             capture_output=True, text=True, timeout=20)
        rabbit = out.stdout.strip().strip('"') or None
    git = {}
    with contextlib.suppress(Exception):
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--short", "--", "src"],
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
        git = {"head": head, "src_modified": [x.strip() for x in dirty if x.strip()]}
    git["src_measured"] = str(SRC)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "git": git,
        "host": socket.gethostname(), "cpus": os.cpu_count(), "cpu_model": model,
        "mem_gb": mem_gb, "kernel": platform.release(), "python": platform.python_version(),
        "rabbitmq": rabbit, "loadavg": os.getloadavg(),
    }


def result_name(name: str) -> str:
    """``name``, or ``name-<KZBENCH_TAG>`` when that is set (keeps runs of variants apart)."""
    tag = os.environ.get("KZBENCH_TAG", "")
    return f"{name}-{tag}" if tag else name


def save_result(name: str, obj: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    obj.setdefault("tag", os.environ.get("KZBENCH_TAG") or None)
    path = RESULTS / f"{result_name(name)}.json"
    path.write_text(json.dumps(obj, indent=1, default=str))
    return path


def common_args(parser: Any, *, reps: int = 3) -> None:
    parser.add_argument("--reps", type=int, default=reps, help="repetitions (median reported)")
    parser.add_argument("--quick", action="store_true", help="smaller counts (smoke run)")
    parser.add_argument("--profile", action="store_true",
                        help="one extra repetition under py-spy (manager + one worker)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--perf", action="store_true",
                        help="count syscalls and context switches per message (perf stat)")

