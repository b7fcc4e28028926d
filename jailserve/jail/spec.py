"""jail, jail-ip4, jail-ip6, jail2/libjail, jail-attach, jidfile -> one OS-neutral JailSpec.

build_spec() runs in the validation step (DESIGN §3 step 2): every problem is a ConfigError
naming FILE:LINE and the option, before any hook, socket or namespace exists.

jail2 keys are FreeBSD's jail_set(2) names on both systems; their types come from
freebsd_params.TABLE (FREEBSD_JAILS §2.4).  On Linux only the keys in LINUX_KEYS have a
meaning; any other key is an error naming it, never ignored (docs/jails.md has the table).

Rules that differ from uWSGI, on purpose (UWSGI_SEMANTICS §3, FREEBSD_JAILS §8):
  * a mistyped int or boolean is an error (uWSGI sends 0 / true);
  * a bare key is true for a boolean, `new` for jailsys, an error for anything else;
  * repeated ip4.addr / ip6.addr are concatenated in order (uWSGI: the kernel keeps the last);
  * `jail` with `jail-attach`, and `jail` with `jail2`, are errors: uWSGI would nest the jails
    and a jail made by jail(2) has children.max = 0, so the second step always fails (EPERM);
  * jail-ip4/jail-ip6 also give addresses to a jail made by jail2 (uWSGI ignores them there).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, Origin
from ..options import FREEBSD, LINUX, current_platform
from . import configured
from . import freebsd_params as fp

# jail2 keys that have a Linux meaning, and what they become (docs/jails.md repeats this).
LINUX_KEYS: dict[str, str] = {
    "path": "root: the new root (pivot_root; the old root detached); without it the host's tree, "
            "in a mount namespace of its own with a fresh /proc",
    "name": "name: the registry entry /run/jailserve/NAME (jail-attach, --jls); the host veth is js-NAME "
            "when that fits in an interface name (else js-JID)",
    "host.hostname": "hostname: set in the jail's new UTS namespace",
    "ip4.addr": "ip4: /32 addresses on the jail end (eth0) of a veth pair, a /32 host route to each",
    "ip6.addr": "ip6: /128 addresses (no DAD) on the jail end of a veth pair, a /128 host route to each",
    "ip4": "ip4_mode: disable = no IPv4 address (the family still works on the jail's own loopback), "
           "new = its addresses, inherit = the host's network namespace (for both families; refused with addresses)",
    "ip6": "ip6_mode: as ip4",
    "vnet": "vnet: no effect of its own: the jail has a new network namespace unless ip4/ip6 = inherit; "
            "vnet=new with addresses is refused, as by FreeBSD's kernel",
    "persist": "persist: the init (jid) stays, reaping, with no process left; SIGTERM, SIGINT or SIGQUIT "
               "to it (or to the keeper) once the master is gone ends the jail; no pdeathsig, so it "
               "outlives a SIGKILLed keeper",
    "allow.sysvipc": "sysvsem/sysvshm/sysvmsg = inherit: the host's IPC namespace",
    "sysvsem": "sysv*: new and disable = a new, empty IPC namespace in which semget/shmget/msgget work "
               "(FreeBSD's disable gives ENOSYS); inherit (any one of the three) = the host's IPC "
               "namespace for all three; new mixed with inherit is refused",
    "sysvshm": "as sysvsem",
    "sysvmsg": "as sysvsem",
    "allow.mount": "allow_mount: with enforce_statfs < 2 the jail's root keeps CAP_SYS_ADMIN (of the "
                   "host's user namespace): any file system type, and sethostname too; with "
                   "enforce_statfs = 2 no effect",
    "allow.mount.*": "allow_mount_fs: recorded, not enforced: Linux cannot limit mounting to some file "
                     "system types; alone (without allow.mount) it grants nothing",
    "enforce_statfs": "enforce_statfs: only as allow.mount's condition (< 2); the jail sees its own mount "
                      "namespace whatever the value",
    "allow.set_hostname": "allow_set_hostname: honoured only when written out as true (CAP_SYS_ADMIN "
                          "kept, which allows mounting too); FreeBSD's default-on is not copied",
    "allow.raw_sockets": "allow_raw_sockets: CAP_NET_RAW kept",
    "children.max": "children_max: 0 (the default) = a seccomp filter refuses user namespaces "
                    "(CLONE_NEWUSER in unshare/clone: EPERM; clone3: ENOSYS); > 0 = no filter (the "
                    "number is not a count limit)",
    "devfs_ruleset": "devfs_ruleset: recorded; the Linux /dev is always the minimal one",
}


@dataclass(frozen=True, slots=True)
class JailParam:
    """One jail2 parameter after merging: canonical key (booleans by positive name), typed value."""

    key: str
    value: Any
    origin: Origin


@dataclass(frozen=True, slots=True)
class JailSpec:
    """The jail to make or enter, the same for every backend.

    `source` is "jail" (the jail option: jail(2) on FreeBSD), "jail2" (jail_set parameters)
    or None (only jail-attach).  root/hostname/name/ip4/ip6 describe the jail being made,
    from whichever option made it.  The fields after `params` are derived for the Linux
    mapping, with FreeBSD's defaults (FREEBSD_JAILS §1.2, §2.4) when a key is absent.
    param_kinds: canonical key -> freebsd_params kind, for the FreeBSD encoding.
    """

    source: str | None
    root: str | None
    hostname: str | None
    name: str | None
    ip4: tuple[ipaddress.IPv4Address, ...] = ()
    ip6: tuple[ipaddress.IPv6Address, ...] = ()
    params: tuple[JailParam, ...] = ()
    attach: str | None = None
    jidfile: str | None = None
    platform: str = LINUX
    origin: Origin | None = None
    reload: bool = False            # config.is_reload: already inside, nothing is jailed again
    ip4_mode: str = "disable"
    ip6_mode: str = "disable"
    vnet: bool = False
    persist: bool = False
    sysvsem: str = "disable"
    sysvshm: str = "disable"
    sysvmsg: str = "disable"
    allow_mount: bool = False
    allow_mount_fs: tuple[str, ...] = ()
    enforce_statfs: int = 2
    allow_set_hostname: bool = True
    allow_raw_sockets: bool = False
    children_max: int = 0
    devfs_ruleset: int | None = None
    param_kinds: dict[str, str] = field(default_factory=dict, compare=False)
    # Linux: `jail-keep-mount` words (PATH[:DEST] or none), read by jail/linux.py keep_paths(), and the app's own paths (chdir,
    # pythonpath, the wsgi-file's directory, virtualenv) that must be visible inside the jail
    keep_mounts: tuple[str, ...] = ()
    app_paths: tuple[str, ...] = ()

    @property
    def creates(self) -> bool:
        return self.source is not None

    @property
    def sysvipc(self) -> bool:
        """Any SysV IPC usable inside (semget works) — FREEBSD_JAILS §5.1."""
        return any(mode != "disable" for mode in (self.sysvsem, self.sysvshm, self.sysvmsg))

    @property
    def attach_jid(self) -> int | None:
        """jail-attach given as digits is a jid, otherwise a name (FREEBSD_JAILS §4.3)."""
        return int(self.attach) if self.attach is not None and self.attach.isdigit() else None

    def param(self, key: str, default: Any = None) -> Any:
        for p in self.params:
            if p.key == key:
                return p.value
        return default


# ---------------------------------------------------------------------------------------
# build_spec


def build_spec(config, platform: str | None = None, probe: fp.Probe | None = None) -> JailSpec | None:
    """Validate the jail options of `config` for `platform`; None when no jail option is set.

    platform: default config.platform (`check-platform` when set, as in `--check
    --check-platform freebsd`, else the OS we run on).
    probe: how to learn the type of a jail2 key missing from the table (FREEBSD_JAILS §2.7);
    by default the kernel's sysctls when validating for the FreeBSD we run on, none
    otherwise (an unknown key is then an error).
    """
    if not configured(config):
        return None
    platform = platform or config.platform   # the loader validated check-platform
    if probe is None and platform == FREEBSD == current_platform():
        from .freebsd import kernel_probe
        probe = kernel_probe
    _check_combinations(config, platform)
    base = _from_jail(config) if config.has("jail") else {}
    params, kinds = _merge_jail2(config, platform, probe)
    spec = _assemble(config, platform, base, params, kinds)
    if spec.vnet and (spec.ip4 or spec.ip6):
        raise ConfigError("vnet=new cannot have addresses (ip4.addr/ip6.addr/jail-ip4/jail-ip6; "
                          "the kernel says EINVAL; docs/jails.md)", spec.origin, "jail2")
    if platform == LINUX:
        _check_linux(spec, config)
    return spec


def _err(config, option: str, message: str) -> ConfigError:
    return ConfigError(message, config.origin(option), option)


def _check_combinations(config, platform: str) -> None:
    has = config.has
    if has("jail") and has("jail-attach"):
        raise _err(config, "jail-attach", "cannot be combined with 'jail' (one jail per start: "
                   "either make a jail or enter one)")
    if has("jail") and has("jail2"):
        raise _err(config, "jail2", "cannot be combined with 'jail': uWSGI would make a second jail "
                   "inside the first, which FreeBSD refuses (a jail(2) jail has children.max = 0); "
                   "put path, host.hostname and name into jail2 instead")
    if (has("jail-ip4") or has("jail-ip6")) and not (has("jail") or has("jail2")):
        option = "jail-ip4" if has("jail-ip4") else "jail-ip6"
        raise _err(config, option, "needs 'jail' (or 'jail2') to make the jail that holds the address")
    if has("jidfile") and not (has("jail") or has("jail2") or has("jail-attach")):
        raise _err(config, "jidfile", "needs 'jail', 'jail2' or 'jail-attach' (no jail, no jid)")
    if platform == LINUX and has("jail-attach") and has("jail2"):
        raise _err(config, "jail2", "with 'jail-attach' would make a jail nested in the attached one; "
                   "nested jails are not supported on Linux")


def split_jail_words(text: str) -> tuple[str, str, str | None]:
    """uWSGI's split: first space -> path, next space -> hostname, the rest (spaces and all) is
    the name.  No hostname -> "", no name -> None (UWSGI_SEMANTICS §3, FREEBSD_JAILS §8)."""
    root, sep, rest = text.partition(" ")
    if not sep:
        return root, "", None
    hostname, sep, name = rest.partition(" ")
    return root, hostname, (name if sep else None)


def _from_jail(config) -> dict[str, Any]:
    root, hostname, name = split_jail_words(config.get("jail"))
    bad = _jail_words_problem(root, hostname, name)
    if bad:
        raise _err(config, "jail", bad + " (allowed: ROOTFS [HOSTNAME [NAME]], separated by single spaces)")
    return {"source": "jail", "root": root, "hostname": hostname, "name": name, "origin": config.origin("jail")}


def _jail_words_problem(root: str, hostname: str, name: str | None) -> str | None:
    if not root:
        return "the jail root is empty"
    if not root.startswith("/"):
        return f"the jail root '{root}' is not an absolute path"
    if len(root.encode()) > 1023:
        return "the jail root is longer than 1023 bytes (MAXPATHLEN)"
    if len(hostname.encode()) > 255:
        return "the hostname is longer than 255 bytes (MAXHOSTNAMELEN)"
    if name is not None:
        if name == "":
            return "the jail name is empty (two spaces after the hostname?)"
        try:
            fp.check_jail_name(name)
        except fp.ParamError as exc:
            return str(exc)
    return None


def _merge_jail2(config, platform: str, probe) -> tuple[dict[str, JailParam], dict[str, str]]:
    """Repeated arrays are concatenated in order, scalars last-wins (FREEBSD_JAILS §3.8)."""
    merged: dict[str, JailParam] = {}
    kinds: dict[str, str] = {}
    for entry in config.entries_for("jail2") if config.has("jail2") else ():
        raw_key, raw_value = entry.value
        try:
            key, value = fp.parse(raw_key, raw_value, probe)
            kind = fp.kind_of(key, probe)
        except fp.ParamError as exc:
            raise ConfigError(str(exc), entry.origin, "jail2") from None
        if platform == LINUX and linux_key(key) is None:
            raise ConfigError(f"jail parameter '{raw_key}' has no Linux equivalent (keys mapped on Linux: "
                              f"{', '.join(LINUX_KEYS)}; see docs/jails.md)", entry.origin, "jail2")
        if kind in (fp.IP4, fp.IP6) and key in merged:
            value = merged[key].value + value
        merged[key] = JailParam(key, value, entry.origin)
        kinds[key] = kind
    for key in ("ip4.addr", "ip6.addr"):
        if key in merged:
            _check_addrs(merged[key], kinds[key])
    return merged, kinds


def linux_key(key: str) -> str | None:
    """The LINUX_KEYS row for a canonical key, or None when it has no Linux meaning."""
    if key in LINUX_KEYS:
        return key
    if key.startswith("allow.mount."):
        return "allow.mount.*"
    return None


def _check_addrs(param: JailParam, kind: str) -> None:
    try:
        fp.check_addresses(kind, param.value)
    except fp.ParamError as exc:
        raise ConfigError(str(exc), param.origin, "jail2") from None


def _assemble(config, platform, base, params, kinds) -> JailSpec:
    fields = dict(base)
    if params:
        fields.update(_from_params(params))
    fields.update(_addresses(config, params))
    fields.update(_derived(params))
    return JailSpec(
        params=tuple(params.values()),
        attach=_attach(config),
        jidfile=config.get("jidfile") if config.has("jidfile") else None,
        platform=platform,
        reload=bool(getattr(config, "is_reload", False)),
        param_kinds=kinds,
        keep_mounts=_keep_mounts(config) if platform == LINUX else (),
        app_paths=_app_paths(config),
        **{"source": None, "root": None, "hostname": None, "name": None, **fields},
    )


def _keep_mounts(config) -> tuple[str, ...]:
    words = []
    for entry in config.entries_for("jail-keep-mount"):
        word = entry.value.strip()
        src, _, dst = word.partition(":")
        if word != "none" and not (src.startswith("/") and (not dst or dst.startswith("/"))):
            raise ConfigError(f"'{entry.value}' is not PATH[:DEST] with absolute paths, or 'none'",
                              entry.origin, "jail-keep-mount")
        words.append(word)
    return tuple(words)


def _app_paths(config) -> tuple[str, ...]:
    """Host paths the app needs after the jail is entered (made absolute from the cwd now)."""
    import os

    paths = [config.get("chdir"), config.get("virtualenv"), *config.get("pythonpath")]
    # a reload re-execs inside the jail and reads the config files again (issue 7): their
    # directory, or (when that directory holds the jail's root, which is never kept) the file
    # itself; the backend drops a file that its kept directory already covers
    for f in getattr(config, "files", ()):
        paths += [os.path.dirname(os.path.abspath(f)), os.path.abspath(f)]
    if config.get("wsgi-file"):
        base = config.get("chdir") or os.getcwd()
        paths.append(os.path.dirname(os.path.join(base, config.get("wsgi-file"))))
    return tuple(os.path.abspath(p) for p in paths if p)


def _from_params(params: dict[str, JailParam]) -> dict[str, Any]:
    def value(key):
        return params[key].value if key in params else None
    return {"source": "jail2", "root": value("path"), "hostname": value("host.hostname"),
            "name": value("name"), "origin": next(iter(params.values())).origin}


def _addresses(config, params: dict[str, JailParam]) -> dict[str, Any]:
    """jail-ip4/6 addresses, after any jail2 ip4.addr/ip6.addr ones; the first is primary."""
    out: dict[str, Any] = {}
    for family, option, key, kind in (("ip4", "jail-ip4", "ip4.addr", fp.IP4), ("ip6", "jail-ip6", "ip6.addr", fp.IP6)):
        addrs = tuple(params[key].value) if key in params else ()
        extra = tuple(config.get(option)) if config.has(option) else ()
        addrs += extra
        if extra:
            try:
                fp.check_addresses(kind, addrs)
            except fp.ParamError as exc:
                raise _err(config, option, str(exc)) from None
        out[family] = addrs
        out[f"{family}_mode"] = _ip_mode(family, params.get(family), addrs)
    return out


def _ip_mode(family: str, param: JailParam | None, addrs: tuple) -> str:
    # FREEBSD_JAILS §2.4: ip4 is disable when neither ip4 nor ip4.addr is given; addresses imply new
    if param is None:
        return "new" if addrs else "disable"
    mode = fp.JAILSYS_NAMES[param.value]
    if addrs and mode != "new":
        raise ConfigError(f"{family}={mode} contradicts the jail's {family} addresses ({family}.addr "
                          f"implies {family}=new; docs/jails.md)", param.origin, "jail2")
    return mode


def _derived(params: dict[str, JailParam]) -> dict[str, Any]:
    def get(key, default):
        return params[key].value if key in params else default
    sysv_all = {True: "inherit", False: "disable"}[get("allow.sysvipc", False)]
    sysv = {k: fp.JAILSYS_NAMES[params[k].value] if k in params else sysv_all
            for k in ("sysvsem", "sysvshm", "sysvmsg")}
    return {
        "vnet": get("vnet", fp.JAIL_SYS_INHERIT) == fp.JAIL_SYS_NEW,
        "persist": get("persist", False),
        "allow_mount": get("allow.mount", False),
        "allow_mount_fs": tuple(k.split(".", 2)[2] for k, p in params.items()
                                if k.startswith("allow.mount.") and p.value),
        "enforce_statfs": get("enforce_statfs", 2),
        "allow_set_hostname": get("allow.set_hostname", True),
        "allow_raw_sockets": get("allow.raw_sockets", False),
        "children_max": get("children.max", 0),
        "devfs_ruleset": get("devfs_ruleset", None),
        **sysv,
    }


def _attach(config) -> str | None:
    if not config.has("jail-attach"):
        return None
    target = config.get("jail-attach")
    problem = None
    if target == "" or target.strip() != target:
        problem = f"'{target}' is not a jid or a jail name"
    elif target.isdigit() and int(target) == 0:
        problem = "jid 0 is the host itself, not a jail"
    elif not target.isdigit() and len(target.encode()) > 255:
        problem = "the jail name is longer than 255 bytes"
    if problem:
        raise _err(config, "jail-attach", problem)
    return target


def _check_linux(spec: JailSpec, config) -> None:
    """What Linux cannot express with one set of namespaces (docs/jails.md)."""
    modes = {spec.sysvsem, spec.sysvshm, spec.sysvmsg} - {"disable"}
    if len(modes) > 1:
        raise ConfigError("on Linux SysV IPC is one namespace: sysvsem, sysvshm and sysvmsg must not "
                          "mix 'new' and 'inherit'", spec.origin, "jail2")
    if "inherit" in (spec.ip4_mode, spec.ip6_mode) and (spec.ip4 or spec.ip6):
        raise ConfigError("ip4/ip6=inherit (the host's network) cannot be combined with jail addresses "
                          "on Linux (one network namespace for both families)", spec.origin, "jail2")
