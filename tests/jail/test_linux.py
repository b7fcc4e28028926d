"""The Linux jail backend against the kernel: real namespaces, mounts, veths and processes,
checked from inside (the jail's master runs a small body) and from outside (/proc, ip,
ipcs, the registry).  Network tests run in a throwaway outer netns with 198.18.0.0/15 and
fd00::/8 addresses only.  Needs root."""
from __future__ import annotations

import dataclasses
import errno
import itertools
import os
import signal
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0,
                                reason="Linux namespaces, as root")

from jailserve import _jail  # noqa: E402
from jailserve.jail import linux  # noqa: E402

from linux_helpers import (attach_spec, children_of, host_mounts_under, make_spec, ns_inodes,  # noqa: E402
                            pidns_members, registry_names, sh, start, throwaway_netns, wait_until)

_names = itertools.count()


@pytest.fixture
def name():
    return f"jt{os.getpid() % 10000}x{next(_names)}"       # fits js-NAME in IFNAMSIZ


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    (r / "ROOT_MARKER").write_text("root\n")
    (tmp_path / "HOST_MARKER").write_text("host\n")
    return r


@pytest.fixture
def netns(name):
    with throwaway_netns(f"{name}-net") as ns:
        yield ns


@pytest.fixture
def jails():
    """Every jail a test starts is killed and reaped at the end, whatever happened."""
    made = []
    yield made
    for jail in made:
        jail.close()


def run(jails, spec, body, **kw):
    jail = start(spec, body, **kw)
    jails.append(jail)
    return jail


def assert_nothing_left(facts, netns=None, root=None, jidfile=None):
    assert pidns_members(facts["pidns"]) == []
    assert facts["name"] not in registry_names()
    if jidfile:
        assert not os.path.exists(jidfile)
    if netns:
        assert sh("ip -o link show type veth", netns) == ""
        assert "198.18." not in sh("ip route", netns)
        assert "fd00:" not in sh("ip -6 route", netns)
    if root:
        assert host_mounts_under(root) == []


def serve_facts(inside, extra=None):
    """Body: report what the master sees, then obey commands until told to exit."""
    facts = {"pid": os.getpid(), "ppid": os.getppid(), "hostname": socket.gethostname(),
             "root": sorted(os.listdir("/")), "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
             "ns": ns_inodes(), "pidns": os.readlink("/proc/self/ns/pid")}
    facts.update(extra() if extra else {})
    inside.send(facts)
    while True:
        cmd = inside.recv()
        if cmd["do"] == "exit":
            return cmd.get("code", 0)
        if cmd["do"] == "abort":
            import faulthandler
            faulthandler.disable()      # pytest turned it on; the abort is the point here
            os.abort()
        if cmd["do"] == "raise":
            raise RuntimeError("crash inside the jail")
        if cmd["do"] == "sh":
            proc = subprocess.run(cmd["cmd"], shell=True, capture_output=True, text=True)
            inside.send({"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr})


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def python_inside(code: str) -> str:
    """A fresh interpreter (as a reload's re-exec starts one), with the server's PYTHONPATH."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO})
    return proc.stdout + proc.stderr


def host_view(jid):
    return {"ns": ns_inodes(jid), "pidns": os.readlink(f"/proc/{jid}/ns/pid")}


# ---------------------------------------------------------------------------------------


def test_jail_namespaces_root_hostname_pids(jails, root, name, tmp_path):
    jidfile = tmp_path / "jid"
    jail = run(jails, make_spec(root, "box1", name, jidfile=str(jidfile)), lambda i: serve_facts(i, lambda: {
        "host_marker": os.path.exists(str(tmp_path / "HOST_MARKER")),
        "etc_passwd": open("/etc/passwd").read(), "resolve": socket.gethostbyname("localhost"),
        "tmp_writable": open("/tmp/x", "w").write("x"), "mountinfo": open("/proc/self/mountinfo").read(),
        # what a reload by re-exec and lazy imports need: the interpreter, the stdlib, jailserve
        "python": python_inside("import xml.dom.minidom, sqlite3, ssl, jailserve._jail, jailserve.jail.linux; print('ok')"),
        "write_usr": subprocess.run(["touch", "/usr/x"], capture_output=True).returncode}))
    facts = jail.recv()
    jid = int(jidfile.read_text())
    assert jidfile.read_text() == f"{jid}\n"
    assert facts["pid"] == 2 and facts["ppid"] == 1
    assert facts["hostname"] == "box1" and socket.gethostname() != "box1"
    assert "ROOT_MARKER" in facts["root"] and not facts["host_marker"]
    assert facts["pids"] == [1, 2]
    assert facts["resolve"] == "127.0.0.1" and facts["etc_passwd"].startswith("root:x:0:0:")
    assert facts["python"] == "ok\n" and facts["write_usr"] != 0      # kept paths are read-only
    assert str(tmp_path) not in facts["mountinfo"].replace(str(root), "ROOT")   # only ROOT's own mounts
    outside, mine = host_view(jid), ns_inodes()
    for ns in ("mnt", "uts", "ipc", "pid", "net"):
        assert outside["ns"][ns] != mine[ns], ns
        assert outside["ns"][ns] == facts["ns"][ns], ns
    assert host_mounts_under(root) == []          # the jail's mounts never reach the host
    jail.send({"do": "exit", "code": 5})
    assert jail.wait() == 5
    assert_nothing_left({**facts, "name": name}, root=root, jidfile=str(jidfile))


def test_no_way_back_to_the_host_through_the_init(jails, root, name, tmp_path):
    """The jail's root may read /proc/1/{cwd,root,fd/*} (the init has fewer capabilities):
    none of them may lead out of the jail, even when the caller held a directory open."""
    def body(inside):
        here = os.stat("/")
        out = {"cwd": os.stat("/proc/1/cwd")[:2] == here[:2], "root": os.stat("/proc/1/root")[:2] == here[:2],
               "own_cwd": os.stat(".")[:2] == here[:2], "dirs": []}
        for pid in ("1", "self"):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.path.isdir(f"/proc/{pid}/fd/{fd}"):
                        out["dirs"].append(f"{pid}:{fd}")
                except OSError:
                    pass
        return serve_facts(inside, lambda: out)

    held = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)     # inherited by keeper, init, master
    try:
        jail = run(jails, make_spec(root, "esc", name), body)
    finally:
        os.close(held)
    facts = jail.recv()
    assert facts["cwd"] and facts["root"] and facts["own_cwd"]
    assert facts["dirs"] == []
    jail.send({"do": "exit"})
    assert jail.wait() == 0


def test_sysv_semaphore_made_inside_is_not_on_the_host(jails, root, name):
    key = 0x4A530000 + os.getpid() % 0xFFFF

    def body(inside):
        semid = _jail.semget(key, 1, _jail.IPC_CREAT | 0o600)
        return serve_facts(inside, lambda: {"semid": semid,
                                            "ipcs": subprocess.run(["ipcs", "-s"], capture_output=True, text=True).stdout})

    jail = run(jails, make_spec(root, "sem", name), body)
    facts = jail.recv()
    assert f"0x{key:08x}" in facts["ipcs"]
    assert f"0x{key:08x}" not in sh("ipcs -s")
    jail.send({"do": "exit"})
    assert jail.wait() == 0
    assert f"0x{key:08x}" not in sh("ipcs -s")


def test_network_veth_addresses_routes_and_cleanup(jails, root, name, netns):
    ip4, ip6 = "198.18.7.2", "fd00:7::2"

    def body(inside):
        srv4 = socket.create_server((ip4, 8080))
        srv6 = socket.create_server((ip6, 8080), family=socket.AF_INET6)
        facts_fn = lambda: {"addr": subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout}  # noqa: E731
        inside.send({"listening": True})
        for srv in (srv4, srv6):
            conn, peer = srv.accept()
            conn.sendall(f"hello from {socket.gethostname()} to {peer[0]}".encode())
            conn.close()
        return serve_facts(inside, facts_fn)

    jail = run(jails, make_spec(root, "web", name, ip4=[ip4], ip6=[ip6]), body, netns=netns)
    assert jail.recv() == {"listening": True}
    got4 = sh(f"python3 -c \"import socket; print(socket.create_connection((\\\"{ip4}\\\", 8080)).recv(99).decode())\"", netns)
    got6 = sh(f"python3 -c \"import socket; print(socket.create_connection((\\\"{ip6}\\\", 8080)).recv(99).decode())\"", netns)
    assert got4.strip() == f"hello from web to {linux.GATEWAY4}"
    assert got6.strip() == f"hello from web to {linux.GATEWAY6}"
    facts = jail.recv()
    inside_addrs = {line.split()[3] for line in facts["addr"].splitlines() if "eth0" in line}
    assert inside_addrs == {f"{ip4}/32", f"{ip6}/128"}            # exactly the jail's, no fe80::
    host_if = f"js-{name}"
    assert host_if in sh("ip -o link show type veth", netns)
    assert f"{ip4} dev {host_if}" in sh("ip route", netns)
    assert f"{ip6} dev {host_if}" in sh("ip -6 route", netns)
    jail.send({"do": "exit"})
    assert jail.wait() == 0
    assert_nothing_left({**facts, "name": name}, netns=netns, root=root)


def test_ip_inherit_keeps_the_host_network_and_no_path_keeps_the_host_root(jails, name, netns, tmp_path):
    """jail2 with ip4=inherit and no path: the host's network namespace and filesystem, but
    its own pid, UTS, mount and IPC namespaces (and a fresh /proc)."""
    def body(inside):
        return serve_facts(inside, lambda: {"host_marker": os.path.exists(str(tmp_path / "HOST_MARKER"))})

    (tmp_path / "HOST_MARKER").write_text("host\n")
    spec = make_spec(None, "inh", name, params={"ip4": 2, "ip6": 2}, ip4_mode="inherit", ip6_mode="inherit")
    jail = run(jails, spec, body, netns=netns)
    facts = jail.recv()
    assert facts["host_marker"] and facts["pids"] == [1, 2]
    assert facts["ns"]["net"] == sh("readlink /proc/self/ns/net", netns).strip()
    assert facts["ns"]["uts"] != ns_inodes()["uts"] and facts["ns"]["mnt"] != ns_inodes()["mnt"]
    jail.send({"do": "exit"})
    assert jail.wait() == 0


def test_jail_root_cannot_change_the_jail(jails, root, name, netns):
    def body(inside):
        out = {}
        for what, fn in (("mount", lambda: _jail.mount("tmpfs", "/tmp", "tmpfs", 0)),
                         ("mknod", lambda: os.mknod("/tmp/null", 0o20666, os.makedev(1, 3))),
                         ("sethostname", lambda: socket.sethostname("other")),
                         ("bind_other", lambda: socket.socket().bind(("198.18.7.99", 80))),
                         ("raw_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
                         ("bind_jail_port_80", lambda: socket.socket().bind(("198.18.7.3", 80)))):
            try:
                fn()
                out[what] = "ok"
            except OSError as exc:
                out[what] = errno.errorcode[exc.errno]
        ip = subprocess.run(["ip", "addr", "add", "198.18.7.50/32", "dev", "eth0"], capture_output=True, text=True)
        out["ip_addr_add"] = ip.returncode
        out["user_ns"] = subprocess.run(["unshare", "-U", "true"], capture_output=True, text=True).stderr
        out["threads_and_forks"] = python_inside(
            "import threading, subprocess; t = threading.Thread(target=print, args=('t',)); t.start(); t.join(); "
            "print(subprocess.run(['true']).returncode)")
        out["uid"] = os.getuid()
        out["status"] = {k: v.strip() for k, v in (line.split(":", 1) for line in open("/proc/self/status"))
                         if k in ("CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb", "NoNewPrivs")}
        out["capbset_sys_admin"] = _jail.capbset_has(linux.CAPS["SYS_ADMIN"])
        return serve_facts(inside, lambda: out)

    jail = run(jails, make_spec(root, "locked", name, ip4=["198.18.7.3"]), body, netns=netns)
    facts = jail.recv()
    assert facts["uid"] == 0
    assert facts["mount"] == "EPERM"
    assert facts["mknod"] == "EPERM"
    assert facts["sethostname"] == "EPERM"
    assert facts["bind_other"] == "EADDRNOTAVAIL"
    assert facts["raw_socket"] == "EPERM"
    assert facts["ip_addr_add"] != 0
    assert "Operation not permitted" in facts["user_ns"]             # children.max = 0
    assert facts["threads_and_forks"] == "t\n0\n"                 # clone3 refused, libc falls back
    assert facts["bind_jail_port_80"] == "ok"      # a jail's root keeps its reserved ports
    kept = sum(1 << linux.CAPS[c] for c in linux.JAIL_ROOT_CAPS)
    status = facts["status"]
    assert int(status["CapBnd"], 16) == int(status["CapEff"], 16) == int(status["CapPrm"], 16) == kept
    assert int(status["CapInh"], 16) == int(status["CapAmb"], 16) == 0
    assert status["NoNewPrivs"] == "1" and facts["capbset_sys_admin"] is False
    (init,) = children_of(jail.keeper)              # the jail's init keeps CAP_KILL alone
    init_status = dict(line.split(":", 1) for line in open(f"/proc/{init}/status"))
    assert int(init_status["CapEff"], 16) == int(init_status["CapBnd"], 16) == 1 << linux.CAPS["KILL"]
    assert "198.18.7.50" not in sh(f"nsenter -t {children_of(jail.keeper)[0]} -n ip -o addr")
    jail.send({"do": "exit"})
    assert jail.wait() == 0


def test_children_max_allows_user_namespaces(jails, root, name):
    def body(inside):
        proc = subprocess.run(["unshare", "-U", "true"], capture_output=True, text=True)
        return serve_facts(inside, lambda: {"rc": proc.returncode, "err": proc.stderr})

    jail = run(jails, make_spec(root, "nest", name, params={"children.max": 1}, children_max=1), body)
    assert jail.recv()["rc"] == 0
    jail.send({"do": "exit"})
    assert jail.wait() == 0


def test_allow_mount_lets_the_jail_mount(jails, root, name):
    def body(inside):
        os.mkdir("/tmp/m")
        _jail.mount("tmpfs", "/tmp/m", "tmpfs", 0)
        return serve_facts(inside, lambda: {"mounted": "/tmp/m" in open("/proc/self/mountinfo").read()})

    spec = make_spec(root, "m", name, params={"allow.mount": True, "allow.mount.tmpfs": True, "enforce_statfs": 1},
                     allow_mount=True, allow_mount_fs=("tmpfs",), enforce_statfs=1)
    jail = run(jails, spec, body)
    assert jail.recv()["mounted"] is True
    jail.send({"do": "exit"})
    assert jail.wait() == 0
    assert host_mounts_under(root) == []


def test_attach_by_name_and_jid_and_jls(jails, root, name, tmp_path):
    jidfile = tmp_path / "jid"
    first = run(jails, make_spec(root, "shared", name, jidfile=str(jidfile)), serve_facts)
    facts = first.recv()
    jid = int(jidfile.read_text())
    attached = []
    for target in (name, str(jid)):
        a = run(jails, attach_spec(target), serve_facts, attach=True)
        attached.append(a)
        inner = a.recv()
        assert inner["hostname"] == "shared"
        assert inner["ns"] == facts["ns"]
        assert "ROOT_MARKER" in inner["root"]
        assert inner["ppid"] == 0                   # its parent (the attacher) is outside the jail
    listed = {j.name: j for j in linux.list_jails()}
    assert listed[name].jid == jid
    assert listed[name].hostname == "shared" and listed[name].root == str(root)
    assert listed[name].processes == 3              # master + two attached (init not counted)
    for a in attached:
        a.send({"do": "exit", "code": 3})
        assert a.wait() == 3
    assert {j.name: j for j in linux.list_jails()}[name].processes == 1
    first.send({"do": "exit"})
    assert first.wait() == 0
    assert_nothing_left({**facts, "name": name}, root=root, jidfile=str(jidfile))


def test_an_attached_process_keeps_the_jail_alive_after_its_master(jails, root, name):
    first = run(jails, make_spec(root, "alive", name), serve_facts)
    facts = first.recv()
    attached = run(jails, attach_spec(name), serve_facts, attach=True)
    attached.recv()
    first.send({"do": "exit", "code": 6})
    wait_until(lambda: jls_processes(name) == 1, "the first master is gone")
    assert os.waitpid(first.keeper, os.WNOHANG) == (0, 0)      # the jail, and its keeper, live on
    attached.send({"do": "sh", "cmd": "hostname"})
    assert attached.recv()["out"].strip() == "alive"
    attached.send({"do": "exit"})
    assert attached.wait() == 0
    assert first.wait() == 6                                    # the status of the jail's own master
    assert_nothing_left({**facts, "name": name}, root=root)


def test_jls_command_lists_the_jail(jails, root, name, jailserve_cli):
    jail = run(jails, make_spec(root, "listed", name), serve_facts)
    facts = jail.recv()
    proc = jailserve_cli("--jls")
    assert proc.returncode == 0, proc.stderr
    (line,) = [row for row in proc.stdout.splitlines() if f" {name} " in row]
    jid = [j.jid for j in linux.list_jails() if j.name == name][0]
    assert line.split()[:3] == [str(jid), name, "listed"]
    assert str(root) in line and line.endswith("/ 1")
    jail.send({"do": "exit"})
    assert jail.wait() == 0
    assert_nothing_left({**facts, "name": name})


def test_persist_outlives_its_last_process(jails, root, name):
    jail = run(jails, make_spec(root, "keep", name, params={"persist": True}, persist=True), serve_facts)
    facts = jail.recv()
    jail.send({"do": "exit", "code": 4})
    (info,) = [j for j in linux.list_jails() if j.name == name]
    wait_until(lambda: jls_processes(name) == 0, "the master is gone")
    assert jail.status is None and os.waitpid(jail.keeper, os.WNOHANG) == (0, 0)   # keeper still waits
    assert pidns_members(facts["pidns"]) == [info.jid]     # only the pause-style init
    again = run(jails, attach_spec(name), serve_facts, attach=True)
    assert again.recv()["hostname"] == "keep"
    again.send({"do": "exit"})
    assert again.wait() == 0
    assert [j.name for j in linux.list_jails()].count(name) == 1
    os.kill(info.jid, signal.SIGTERM)              # no master left: TERM removes the jail
    assert jail.wait() == 4                        # the keeper exits with the master's status
    assert_nothing_left({**facts, "name": name}, root=root)


def jls_processes(name) -> int:
    return [j for j in linux.list_jails() if j.name == name][0].processes


def test_remove_kills_the_jail_like_jail_r(jails, root, name):
    jail = run(jails, make_spec(root, "gone", name, params={"persist": True}, persist=True), serve_facts)
    facts = jail.recv()
    linux.remove(name)
    assert jail.wait() == 128 + signal.SIGKILL     # the init's status, as the keeper saw it
    assert_nothing_left({**facts, "name": name}, root=root)
    with pytest.raises(OSError) as exc:
        linux.remove(name)
    assert exc.value.errno == errno.ENOENT


def _master_host_pid(jail) -> int:
    (init,) = children_of(jail.keeper)
    (master,) = children_of(init)
    return master


@pytest.mark.parametrize("how, status", [
    ("exit", 9),
    ("sigint-keeper", 130),
    ("sigterm-keeper", 128 + signal.SIGTERM),
    ("sigkill-master", 128 + signal.SIGKILL),
    ("abort-inside", 128 + signal.SIGABRT),
    ("raise-inside", 71),
    ("sigkill-keeper", -signal.SIGKILL),
])
def test_every_stop_path_leaves_nothing(jails, root, name, netns, tmp_path, how, status):
    jidfile = tmp_path / "jid"
    jail = run(jails, make_spec(root, "stop", name, ip4=["198.18.8.2"], ip6=["fd00:8::2"], jidfile=str(jidfile)),
               serve_facts, netns=netns)
    facts = jail.recv()
    assert f"js-{name}" in sh("ip -o link show type veth", netns)
    if how == "exit":
        jail.send({"do": "exit", "code": 9})
    elif how == "sigint-keeper":
        os.kill(jail.keeper, signal.SIGINT)        # relayed: Python's KeyboardInterrupt in the master
    elif how == "sigterm-keeper":
        os.kill(jail.keeper, signal.SIGTERM)
    elif how == "sigkill-master":
        os.kill(_master_host_pid(jail), signal.SIGKILL)
    elif how == "abort-inside":
        jail.send({"do": "abort"})
    elif how == "raise-inside":
        jail.send({"do": "raise"})
    elif how == "sigkill-keeper":
        os.kill(jail.keeper, signal.SIGKILL)
    assert jail.wait() == status
    if how == "sigkill-keeper":
        # nobody is left to clean up: the pdeathsig killed the init, the kernel the rest;
        # the netns (and the veth with it) is freed asynchronously, the stale registry
        # entry by the next look at the registry
        wait_until(lambda: pidns_members(facts["pidns"]) == [], "the jail's processes are gone")
        wait_until(lambda: sh("ip -o link show type veth", netns) == "", "the veth is gone")
        assert name not in [j.name for j in linux.list_jails()]
        jidfile.unlink()                            # the one thing a SIGKILLed keeper leaves
    assert_nothing_left({**facts, "name": name}, netns=netns, root=root, jidfile=str(jidfile))


def test_create_failure_raises_oserror_and_leaves_nothing(tmp_path, name):
    missing = tmp_path / "no-such-root"
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            linux.create(make_spec(missing, "x", name))
            code = 99                                # no master may come out of a failed create
        except OSError as exc:
            os.write(out_w, f"{exc.errno} {exc.strerror}".encode())
        os._exit(code)
    os.close(out_w)
    _, st = os.waitpid(pid, 0)
    text = os.read(out_r, 4096).decode()
    os.close(out_r)
    assert os.waitstatus_to_exitcode(st) == 0
    assert text.startswith(f"{errno.ENOENT} ") and str(missing) in text
    assert name not in registry_names()


def test_a_live_name_cannot_be_taken_twice(jails, root, name):
    first = run(jails, make_spec(root, "one", name), serve_facts)
    first.recv()
    with pytest.raises(OSError) as exc:
        linux._reserve(name, {"keeper": os.getpid(), "jid": None})
    assert exc.value.errno == errno.EEXIST
    first.send({"do": "exit"})
    assert first.wait() == 0


def test_describe_lists_the_steps_without_doing_them(root, name):
    before = registry_names()
    lines = linux.describe(make_spec(root, "d", name, ip4=["198.18.9.2"], jidfile="/nonexistent/jid"))
    text = "\n".join(lines)
    assert "unshare(CLONE_NEWPID)" in text and "pivot_root" in text
    assert "198.18.9.2/32" in text and f"js-{name}" in text
    assert "capabilities kept" in text and "SYS_ADMIN" not in text
    assert f"keep read-only: {sys.base_prefix}" in text
    assert registry_names() == before and not os.path.exists("/nonexistent/jid")
    attach_lines = linux.describe(attach_spec(name))
    assert any("setns" in line for line in attach_lines)


def test_kept_paths_cover_the_interpreter_and_never_hold_root(root):
    kept = linux.auto_keep(str(root))
    assert any(sys.base_prefix == k or sys.base_prefix.startswith(k + "/") for k in kept)
    assert "/usr" in kept                          # ROOT has no /usr of its own
    assert not any(str(root).startswith(k.rstrip("/") + "/") or k.startswith(str(root)) for k in kept)
    (root / "usr").mkdir()
    assert "/usr" not in linux.auto_keep(str(root))


def keep_spec(root, name, *words):
    return dataclasses.replace(make_spec(root, "k", name), keep_mounts=words)


def test_jail_keep_mount_binds_read_only_and_none_turns_the_automatic_set_off(jails, root, name, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("hello\n")

    def body(inside):
        out = {"f": open("/data/f").read(), "prefix": os.path.exists(sys.base_prefix), "usr": os.path.exists("/usr")}
        try:
            open("/data/g", "w")
            out["write"] = "ok"
        except OSError as exc:
            out["write"] = errno.errorcode[exc.errno]
        inside.send(out)
        return 0

    jail = run(jails, keep_spec(root, name, f"{data}:/data"), body)
    assert jail.recv() == {"f": "hello\n", "prefix": True, "usr": True, "write": "EROFS"}
    assert jail.wait() == 0
    bare = run(jails, keep_spec(root, name, "none", f"{data}:/data"), body)
    assert bare.recv() == {"f": "hello\n", "prefix": False, "usr": False, "write": "EROFS"}
    assert bare.wait() == 0


def test_jail_keep_mount_reaches_the_backend(root, tmp_path):
    from jailserve.config import load_config
    from jailserve.jail.spec import build_spec
    ini = tmp_path / "k.ini"
    ini.write_text(f"[uwsgi]\njail = {root} h n\njail-keep-mount = /srv:/data\n")
    spec = build_spec(load_config([str(ini)], {}))
    assert ("/srv", "/data") in linux.layout(spec).keep


def test_registry_sweep_leaves_foreign_directories_alone():
    """Only dead jail entries (a jail.json whose init is gone) are swept; anything else under
    /run/jailserve belongs to someone else (the lock engines' registry once lived there)."""
    foreign = os.path.join(linux.REGISTRY_DIR, "not-a-jail-entry-test")
    os.makedirs(foreign, exist_ok=True)
    try:
        linux.list_jails()
        assert os.path.isdir(foreign)
    finally:
        os.rmdir(foreign)
