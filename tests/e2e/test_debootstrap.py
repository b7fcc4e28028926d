"""A debootstrap-made Debian rootfs as the jail's root, served for real (issue 4; LINUX_JAILS §7).

The rootfs is `debootstrap --variant=minbase SUITE DIR http://deb.debian.org/debian`, SUITE
being this machine's own release (VERSION_CODENAME of /etc/os-release), made once and kept
in /var/cache/jailserve-debootstrap/SUITE/ for every later run (CI runs on this machine too).
It is built in a dot-directory next to it and renamed into place only when debootstrap
succeeded, so an interrupted build is never taken for a rootfs; builds are serialised with
a lock file, and debootstrap runs in a private mount namespace so that an interrupted build
leaves no /proc or /sys mounted in the cache.  Without a cached rootfs and with the mirror
unreachable the test is skipped, saying so.

The app reports its hostname, /etc/debian_version (the rootfs's), whether a host marker
file is visible (it must not be), its uid and gid (dropped to a user that only the rootfs's
/etc/passwd knows), the pids it sees (the jail's init, master and two workers), /usr/bin
(the rootfs's) and the result of a stdlib import made only now.  The server is then
reloaded (SIGHUP: the master re-executes inside the jail, reading its config from a kept
directory), asked again, stopped with SIGINT, and nothing of the jail may be left: no
process, network namespace, veth, route, registry entry, jidfile or mount.

The test never writes to the cache: the jail's root is an overlay (the cached rootfs as
the lower layer, an upper layer in tmp_path) mounted in a private mount namespace of the
server's own, so it goes when the server does.  The server (`python -m jailserve`, the
interpreter running this test) runs in a throwaway outer network namespace; the app is
asked over HTTP at the jail's address (198.18.0.0/15) from there.

A minbase rootfs has its own /usr, so the backend keeps (binds read-only) only the
interpreter's prefix, sys.path and jailserve at their own paths, and the interpreter's
shared libraries (libc, libm) come from the rootfs's /usr: that works because the rootfs is
the host's own Debian release.  A pyenv prefix under /root sits below the rootfs's /root,
which Debian makes 0700: once the server drops to an unprivileged uid it could not read its own
interpreter (measured: a later `import xml.dom.minidom` in the app fails with "No module
named 'xml'"; on the host it could not either).  The test adds search permission for others
to such directories (/root 0700 -> 0701) in the overlay's upper layer only, which is what
a deployment with such an interpreter has to do in its rootfs too (docs/jails.md).
"""
from __future__ import annotations

import fcntl
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0,
                                 reason="Linux namespaces, as root"),
              pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "tests" / "jail"))
from e2e_support import get_in_netns, netns_fixture
from linux_helpers import registry_names, sh, wait_until  # noqa: E402

from jailserve.jail import linux  # noqa: E402

CACHE = Path(os.environ.get("JAILSERVE_DEBOOTSTRAP_CACHE", "/var/cache/jailserve-debootstrap"))
MIRROR = "http://deb.debian.org/debian"
ADDR = "198.18.61.2"
PORT = 8080
USER, UID = "jsdebian", 61234                         # in the jail's /etc/passwd only

APP = '''
import json, os, socket, sys
def application(environ, start_response):
    with open("/etc/debian_version") as f:
        debian = f.read()
    try:                                  # a stdlib module nothing has imported yet, as the dropped uid
        import xml.dom.minidom
        late_import = xml.dom.minidom.parseString("<a/>").documentElement.tagName
    except Exception as exc:
        late_import = repr(exc)
    facts = {"hostname": socket.gethostname(), "debian_version": debian, "uid": os.getuid(),
             "gid": os.getgid(), "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
             "pidns": os.readlink("/proc/self/ns/pid"), "host_marker": os.path.exists(%(marker)r),
             "root": sorted(os.listdir("/")), "executable": os.path.realpath("/proc/self/exe"),
             "late_import": late_import, "prefix": sys.base_prefix, "usr_bin": sorted(os.listdir("/usr/bin"))}
    body = json.dumps(facts).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''

# ---------------------------------------------------------------------------------------
# the cached rootfs


def host_suite() -> str:
    release = {}
    with open("/etc/os-release") as f:
        for line in f:
            key, _, value = line.strip().partition("=")
            release[key] = value.strip('"')
    if release.get("ID") != "debian" or not release.get("VERSION_CODENAME"):
        pytest.skip(f"not a Debian release with a codename (/etc/os-release: ID={release.get('ID')!r}): "
                    "the rootfs is made of the host's own Debian suite")
    return release["VERSION_CODENAME"]


def mirror_problem(suite: str) -> str | None:
    """None when the mirror answers for the suite, else why not."""
    url = f"{MIRROR}/dists/{suite}/Release"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=20) as resp:
            return None if resp.status == 200 else f"{url}: HTTP {resp.status}"
    except OSError as exc:
        return f"{url}: {exc}"


def _stale_builds(suite: str):
    """Leftovers of interrupted builds (their mounts died with debootstrap's namespace)."""
    for path in CACHE.glob(f".{suite}.build-*"):
        shutil.rmtree(path, ignore_errors=True)


def build_rootfs(suite: str) -> Path:
    """The cached minbase rootfs of suite, made now if it is not there yet."""
    final = CACHE / suite
    if (final / "etc" / "debian_version").is_file():
        return final
    if not shutil.which("debootstrap"):
        pytest.fail("debootstrap is not installed (tools/install.sh --test installs it)")
    CACHE.mkdir(mode=0o755, parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)             # another run may be building it right now
        if (final / "etc" / "debian_version").is_file():
            return final
        problem = mirror_problem(suite)
        if problem:
            pytest.skip(f"no cached rootfs in {final} and the Debian mirror is unreachable: {problem}")
        _stale_builds(suite)
        build = Path(tempfile.mkdtemp(prefix=f".{suite}.build-", dir=CACHE))
        log = CACHE / f".{suite}.log"
        started = time.monotonic()
        with open(log, "w") as out:
            # a private mount namespace: debootstrap's /proc and /sys mounts in the target go
            # with it even when it is killed half-way
            done = subprocess.run(["unshare", "--mount", "--propagation", "private", "debootstrap",
                                   "--variant=minbase", suite, str(build), MIRROR],
                                  stdout=out, stderr=subprocess.STDOUT, check=False,
                                  pass_fds=(lock.fileno(),))    # locked until debootstrap is gone too
        if done.returncode != 0:
            shutil.rmtree(build, ignore_errors=True)
            problem = mirror_problem(suite)
            if problem:
                pytest.skip(f"debootstrap failed and the Debian mirror is unreachable: {problem}")
            pytest.fail(f"debootstrap {suite} failed ({done.returncode}); its log: {log}\n"
                        + log.read_text(errors="replace")[-3000:])
        os.chmod(build, 0o755)                       # mkdtemp made it 0700
        os.rename(build, final)                      # atomic: a rootfs is there whole or not at all
        print(f"debootstrap {suite}: {time.monotonic() - started:.1f} s into {final}", file=sys.stderr)
    return final


@pytest.fixture(scope="session")
def debian_rootfs() -> Path:
    return build_rootfs(host_suite())


# ---------------------------------------------------------------------------------------
# the test


def _blocking_ancestors(rootfs: Path, path: str) -> list[str]:
    """Directories of the rootfs on the way to path (a kept host path) that others cannot
    traverse: the kept path's mount point sits below them, so they govern access to it."""
    out, cur = [], rootfs
    for part in Path(path).parts[1:-1]:
        cur = cur / part
        if not cur.is_dir() or cur.is_symlink():
            break
        if not os.stat(cur).st_mode & 0o001:
            out.append("/" + str(cur.relative_to(rootfs)))
    return out


netns = netns_fixture("jsdeb")


@pytest.fixture
def server_procs():
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:                               # only what this test started, by pid
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)          # the keeper's own clean-up path first
            try:
                proc.wait(timeout=60)                # a liveness guard, not a timing check
            except subprocess.TimeoutExpired:
                proc.kill()                          # its pdeathsig takes the jail along
                proc.wait()
    linux.list_jails()                               # drops the entry a SIGKILLed keeper left


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _starttime(pid: int | str) -> int | None:
    """Clock ticks after boot at which pid started (None: no such process)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _ticks_now() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK")


def _ns_holders(kind: str, inode: str, started_before: float) -> list[int]:
    """Processes in the namespace `inode` that started before `started_before`.  Namespace
    inode numbers are reused (other jails come and go on this machine), but a namespace
    that got ours later has only processes started after ours was gone."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.readlink(f"/proc/{d}/ns/{kind}") == inode:
                    started = _starttime(d)
                    if started is not None and started <= started_before:
                        out.append(int(d))
            except OSError:
                pass
    return out


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path))]


def test_debootstrap_rootfs_serves_an_app(debian_rootfs, tmp_path, netns, server_procs):
    name = f"deb{os.getpid() % 100000}"
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "root"
    for d in (upper, work, merged):
        d.mkdir()
    app = tmp_path / "app"                           # a host directory, kept read-only (chdir)
    app.mkdir()
    (tmp_path / "HOST_MARKER").write_text("x\n")
    (app / "app.py").write_text(APP % {"marker": str(tmp_path / "HOST_MARKER")})
    # the interpreter's prefix is kept at its host path: a rootfs directory above it that
    # others cannot enter (Debian's /root is 0700) is opened to traversal, in the upper layer
    opened = sorted({d for p in (sys.base_prefix, sys.prefix) for d in _blocking_ancestors(debian_rootfs, p)})
    for d in opened:
        (upper / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
        st = os.stat(debian_rootfs / d.lstrip("/"))
        os.chown(upper / d.lstrip("/"), st.st_uid, st.st_gid)
        os.chmod(upper / d.lstrip("/"), (st.st_mode & 0o7777) | 0o001)
    # a user only the rootfs knows (in the upper layer): uid/gid are resolved inside the jail
    with pytest.raises(KeyError):
        pwd.getpwnam(USER)
    (upper / "etc").mkdir(exist_ok=True)
    for fname, line in (("passwd", f"{USER}:x:{UID}:{UID}::/nonexistent:/usr/sbin/nologin\n"),
                        ("group", f"{USER}:x:{UID}:\n")):
        shutil.copy2(debian_rootfs / "etc" / fname, upper / "etc" / fname)
        with open(upper / "etc" / fname, "a") as f:
            f.write(line)
    jidfile = tmp_path / "jid"
    ini = app / "jail.ini"        # a reload re-reads it by its path inside the jail: kept with the app
    ini.write_text(f"""[uwsgi]
jail = {merged} debjail {name}
jail-ip4 = {ADDR}
jidfile = {jidfile}
http-socket = {ADDR}:{PORT}
master = true
processes = 2
chdir = {app}
wsgi-file = app.py
uid = {USER}
gid = {USER}
""")
    log = tmp_path / "server.log"
    overlay = f"lowerdir={debian_rootfs},upperdir={upper},workdir={work}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    # unshare execs sh, sh execs ip, ip execs python: the Popen pid is the server's (the keeper's)
    script = 'mount -t overlay overlay -o "$1" "$2" && exec ip netns exec "$3" "$4" -m jailserve "$5"'
    server = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                               overlay, str(merged), netns, sys.executable, str(ini)],
                              stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server_procs.append(server)

    def started():
        assert server.poll() is None, f"the server exited with {server.returncode}:\n{log.read_text()}"
        return "spawned jailserve worker 2" in log.read_text()
    wait_until(started, "both workers")

    def ask(netns):
        return json.loads(get_in_netns(netns, f"http://{ADDR}:{PORT}/", log=log))
    facts = ask(netns)

    assert facts["hostname"] == "debjail"
    assert facts["debian_version"] == (debian_rootfs / "etc" / "debian_version").read_text()
    assert facts["host_marker"] is False
    assert {"etc", "usr", "var", "bin"} <= set(facts["root"])      # the Debian tree, not a synthesized one
    assert facts["uid"] == UID and facts["gid"] == UID              # the rootfs's /etc, not the host's
    assert facts["pids"] == [1, 2, 3, 4]                            # init, master, two workers
    assert facts["executable"] == os.path.realpath(sys.executable)  # the host's interpreter, kept
    assert facts["prefix"] == sys.base_prefix and facts["late_import"] == "a", (facts, opened)
    # /usr is the rootfs's own, unless the interpreter itself lives in /usr: then the
    # backend keeps the host's /usr over it (docs/jails.md)
    usr = Path("/") if _within(sys.base_prefix, "/usr") else debian_rootfs
    assert facts["usr_bin"] == sorted(os.listdir(usr / "usr" / "bin"))
    jid = int(jidfile.read_text())                   # the host pid of the jail's init
    assert os.readlink(f"/proc/{jid}/ns/pid") == facts["pidns"]
    jail_netns, jid_started = os.readlink(f"/proc/{jid}/ns/net"), _starttime(jid)
    assert f"js-{name}" in sh("ip -o link show type veth", netns)

    # a graceful reload re-executes the master inside the jail: a fresh interpreter that
    # starts from the kept prefix, with the rootfs's libraries, as the dropped uid
    server.send_signal(signal.SIGHUP)                # the keeper relays it to the master
    wait_until(lambda: started() and "reload 1 of this instance" in log.read_text(), "the re-executed master")
    wait_until(lambda: log.read_text().count("spawned jailserve worker 2") >= 2, "its workers")
    again = ask(netns)
    assert again["pidns"] == facts["pidns"] and again["late_import"] == "a" and again["uid"] == UID

    server.send_signal(signal.SIGINT)                # the keeper relays it: uWSGI's shutdown
    assert server.wait() == 0, log.read_text()
    ended = _ticks_now()
    assert _starttime(jid) != jid_started           # the init is gone (the kernel took the rest with it)
    assert _ns_holders("pid", facts["pidns"], ended) == [] and _ns_holders("net", jail_netns, ended) == []
    assert name not in registry_names() and not jidfile.exists()
    assert sh("ip -o link show type veth", netns) == "" and "198.18." not in sh("ip route", netns)
    assert _mounts_under(tmp_path) == [] and _mounts_under(CACHE) == []
    # the cache was not written to: the mount points of kept paths went to the upper layer
    for kept in (str(app), sys.base_prefix, str(REPO)):
        assert not (debian_rootfs / kept.lstrip("/")).exists(), kept
