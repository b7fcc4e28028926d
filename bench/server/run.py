"""Server-side benchmark: jailserve vs uWSGI 2.0.31, gunicorn (sync), bjoern and nginx.

    python bench/server/run.py [--duration 5] [--connections 32] [--repeat 3] [--only NAME,...] [--no-readme]

Each server runs pinned to CPU 0 (taskset) with one worker, wrk pinned to CPU 1.  For each
load it reports requests/s, p99 latency, and the server's CPU per request: user+sys time of
every process of the server (the process tree, nginx included where it fronts the app)
divided by the requests wrk completed.  Results go to stdout, bench/server/results.json and
the table in bench/README.md.  Benchmarks are not tests: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
README = os.path.join(ROOT, "bench", "README.md")
SERVER_CPU, CLIENT_CPU = "0", "1"
TICK = os.sysconf("SC_CLK_TCK")

LOADS = {
    "keep-alive GET hello": dict(path="/", args=[]),
    "Connection: close GET": dict(path="/", args=["-H", "Connection: close"]),
    "POST 16 KiB echo": dict(path="/echo", args=["-s", os.path.join(HERE, "post16k.lua")]),
    "GET 64 KiB": dict(path="/big", args=[]),
}


@dataclass
class Server:
    name: str
    commands: list[list[str]]            # started in order; wrk talks to `port`
    port: int
    waits: list[int] = field(default_factory=list)   # ports that must accept before the run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_conf(tmp: str, port: int, body: str) -> list[str]:
    """An nginx in the foreground, one process, on 127.0.0.1:port, with `body` as location /."""
    conf = os.path.join(tmp, f"nginx-{port}.conf")
    with open(conf, "w") as f:
        f.write(f"""
daemon off; master_process off; worker_processes 1; pid {tmp}/nginx-{port}.pid;
error_log {tmp}/nginx-{port}.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp};
  fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  client_max_body_size 1m; client_body_buffer_size 64k; uwsgi_buffers 8 64k;
  include /etc/nginx/uwsgi_params;
  server {{ listen 127.0.0.1:{port}; location / {{ {body} }} }}
}}
""")
    return ["nginx", "-p", tmp, "-c", conf]


def uwsgi_binary() -> str:
    """The uwsgi installed beside this interpreter (the project's .venv), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "uwsgi")
    return beside if os.access(beside, os.X_OK) else shutil.which("uwsgi") or "uwsgi"


def servers(tmp: str) -> list[Server]:
    py = sys.executable
    app = os.path.join(HERE, "app.py")
    js = [py, "-m", "jailserve", "--master", "--processes", "1", "--disable-logging", "--wsgi-file", app]
    uw = [uwsgi_binary(), "--master", "--processes", "1", "--disable-logging",
          "--wsgi-file", app, "--need-app"]
    out = []
    for name, base in (("jailserve", js), ("uWSGI", uw)):
        p = free_port()
        out.append(Server(f"{name} http-socket", [base + ["--http-socket", f"127.0.0.1:{p}"]], p))
        p = free_port()
        out.append(Server(f"{name} http11-socket", [base + ["--http11-socket", f"127.0.0.1:{p}"]], p))
        up, front = free_port(), free_port()
        out.append(Server(f"{name} socket + nginx", [base + ["--socket", f"127.0.0.1:{up}"],
                                                     nginx_conf(tmp, front, f"uwsgi_pass 127.0.0.1:{up};")],
                          front, [up]))
    p = free_port()
    out.append(Server("gunicorn sync", [[py, "-m", "gunicorn", "-w", "1", "-k", "sync", "--chdir", HERE,
                                         "-b", f"127.0.0.1:{p}", "--log-level", "warning", "app:application"]], p))
    p = free_port()
    out.append(Server("bjoern", [[py, os.path.join(HERE, "bjoern_server.py"), "127.0.0.1", str(p)]], p))
    p = free_port()
    out.append(Server("nginx return 200", [nginx_conf(tmp, p, 'return 200 "Hello, World!";')], p))
    return out


# ---------------------------------------------------------------------------------------
# processes and CPU accounting


def tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """user+sys of the processes, including their reaped children (cutime/cstime)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])     # utime stime cutime cstime
    return total / TICK


def pss_kib(pids: list[int]) -> list[int]:
    """Proportional set size of each process (smaps_rollup): shared pages count by share."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                out += [int(line.split()[1]) for line in f if line.startswith("Pss:")]
        except OSError:
            continue
    return out


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before accepting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not accepting after {timeout:.0f} s")


def start(server: Server, logdir: str) -> list[subprocess.Popen]:
    procs = []
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for i, argv in enumerate(server.commands):
        log = open(os.path.join(logdir, f"{re.sub(r'[^a-z0-9]+', '_', server.name.lower())}-{i}.log"), "w")
        procs.append(subprocess.Popen(["taskset", "-c", SERVER_CPU, *argv], stdout=log, stderr=log,
                                      cwd=HERE, env=env, start_new_session=True))
        last = i == len(server.commands) - 1
        # the app server's own port first (nginx needs its upstream), the front port last
        for port in (server.waits if i == 0 and server.waits else []) + ([server.port] if last else []):
            wait_port(port, procs[-1])
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)    # the session we made for it: its workers too
        except ProcessLookupError:
            pass
        proc.wait()


# ---------------------------------------------------------------------------------------
# wrk


def wrk(port: int, load: dict, duration: float, connections: int) -> dict:
    argv = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency",
            *load["args"], f"http://127.0.0.1:{port}{load['path']}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60).stdout
    return parse_wrk(out)


def _duration_ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(out: str) -> dict:
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        # a read error on Connection: close is the server closing as asked; count the rest
        errors += int(m.group(1)) + int(m.group(3)) + int(m.group(4))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return dict(requests=requests, rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
                p99_ms=_duration_ms(p99.group(1)) if p99 else None, errors=errors)


def idle_memory(server: Server, procs) -> dict:
    """PSS after a few requests (the app imported and touched), before the loads."""
    wrk(server.port, LOADS["keep-alive GET hello"], 1, 4)
    time.sleep(0.5)
    pss = pss_kib([p for proc in procs for p in tree(proc.pid)])
    return {"processes": len(pss), "total_kib": sum(pss), "each_kib": pss}


def measure(server: Server, procs, load: dict, duration: float, connections: int,
            repeat: int = 1) -> dict:
    """The median (by CPU per request) of `repeat` wrk runs after a warm-up.  One run alone
    is not enough on this machine: with the same server and load, the kernel's cost per
    request of a run can come out twice that of the next (the 64 KiB load shows it for every
    server, bjoern and nginx included), so each cell is the middle of several runs."""
    wrk(server.port, load, 1, connections)                       # warm-up, not counted
    runs = []
    for _ in range(repeat):
        pids = [p for proc in procs for p in tree(proc.pid)]
        before = cpu_seconds(pids)
        result = wrk(server.port, load, duration, connections)
        pids = [p for proc in procs for p in tree(proc.pid)]
        result["cpu_us_per_req"] = (cpu_seconds(pids) - before) * 1e6 / max(result["requests"], 1)
        runs.append(result)
    runs.sort(key=lambda r: r["cpu_us_per_req"])
    median = dict(runs[len(runs) // 2])
    median["cpu_us_per_req_runs"] = [round(r["cpu_us_per_req"], 1) for r in runs]
    return median


# ---------------------------------------------------------------------------------------
# report


def versions() -> dict:
    def run(*argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    def pkg(name):
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version(name)
        except PackageNotFoundError:
            return "?"
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"python": platform.python_version(), "interpreter": sys.executable, "uWSGI": run(uwsgi_binary(), "--version"),
            "gunicorn": pkg("gunicorn"), "bjoern": pkg("bjoern"), "nginx": run("nginx", "-v"),
            "wrk": run("wrk", "-v").split(" [")[0], "cpu": cpu, "kernel": platform.release()}


def table(results: dict, load: str) -> list[str]:
    rows = results[load]
    ref = {"Connection: close GET": "jailserve http-socket"}.get(load, "jailserve http11-socket")
    ref_cpu = rows.get(ref, {}).get("cpu_us_per_req")
    lines = [f"**{load}** (CPU ratio: peer / {ref})", "",
             "| server | req/s | p99 ms | CPU µs/req | peer CPU / jailserve | errors |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | |")
            continue
        ratio = f"{r['cpu_us_per_req'] / ref_cpu:.2f}" if ref_cpu else "-"
        p99 = f"{r['p99_ms']:.2f}" if r["p99_ms"] is not None else "-"
        lines.append(f"| {name} | {r['rps']:.0f} | {p99} | {r['cpu_us_per_req']:.1f} | {ratio} | {r['errors']} |")
    return lines + [""]


def write_readme(markdown: str) -> None:
    start, end = "<!-- results start -->", "<!-- results end -->"
    text = open(README).read() if os.path.exists(README) else f"# Benchmarks\n\n{start}\n{end}\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    with open(README, "w") as f:
        f.write(f"{head}{start}\n{markdown}\n{end}{tail}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="wrk runs per cell; the median is reported")
    ap.add_argument("--only", default="", help="comma-separated server name prefixes")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="jailserve-bench-")
    chosen = [s for s in servers(tmp)
              if not args.only or any(s.name.startswith(o.strip()) for o in args.only.split(","))]
    results: dict = {load: {} for load in LOADS}
    memory: dict = {}
    for server in chosen:
        print(f"== {server.name}", flush=True)
        try:
            procs = start(server, tmp)
        except (RuntimeError, OSError) as exc:
            for load in LOADS:
                results[load][server.name] = {"error": str(exc)}
            print(f"   failed to start: {exc} (logs in {tmp})", flush=True)
            continue
        try:
            memory[server.name] = idle_memory(server, procs)
            for name, load in LOADS.items():
                try:
                    r = measure(server, procs, load, args.duration, args.connections, args.repeat)
                except (AttributeError, subprocess.TimeoutExpired) as exc:   # wrk printed no result
                    r = {"error": f"no wrk result ({type(exc).__name__})"}
                results[name][server.name] = r
                print(f"   {name}: {r}", flush=True)
        finally:
            stop(procs)
    info = versions()
    info.update(duration_s=args.duration, connections=args.connections, repeat=args.repeat, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump({"info": info, "results": results, "memory": memory}, f, indent=1)
    md = [f"Run {info['date']}: {info['cpu']}, Linux {info['kernel']}, Python {info['python']} "
          f"({os.path.relpath(info['interpreter'], ROOT) if info['interpreter'].startswith(ROOT) else info['interpreter']}), "
          f"{info['uWSGI']and 'uWSGI ' + info['uWSGI']}, gunicorn {info['gunicorn']}, bjoern {info['bjoern']}, "
          f"{info['nginx']}, {info['wrk']}; server on CPU {SERVER_CPU}, wrk -t1 -c{args.connections} "
          f"-d{args.duration:g}s on CPU {CLIENT_CPU}; one worker per server; each cell the median "
          f"of {args.repeat} runs (by CPU per request).", ""]
    for load in LOADS:
        md += table(results, load)
    md += ["**Memory** (PSS after a few requests, every process of the server; a jailserve or uWSGI "
           "server is a master and one worker, + nginx where it fronts the app)", "",
           "| server | processes | PSS total MiB | PSS of each process MiB |", "|---|---:|---:|---|"]
    md += [f"| {name} | {m['processes']} | {m['total_kib'] / 1024:.1f} | "
           f"{' + '.join(f'{k / 1024:.1f}' for k in m['each_kib'])} |" for name, m in memory.items()]
    md.append("")
    text = "\n".join(md)
    print(text)
    if not args.no_readme and not args.only:
        write_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
