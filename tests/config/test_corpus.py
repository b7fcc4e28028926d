"""The configuration language, case by case.

Each case's expectation is written from ../shared/UWSGI_SEMANTICS.md (the section is in the
case's `ref`), not from jailserve's output.  Where jailserve deliberately differs from uWSGI
(the compatibility rule: refuse what uWSGI silently misreads; nest logic blocks), the case
says "jailserve:" in its `ref`.

A case: files (name -> text, written into a temporary directory that is also the cwd), argv,
env, and expectations: get (option -> typed value), placeholders, error (substring, "file:line"
or None, option), warn (substring of some warning), reload.
"""
from __future__ import annotations

import os
import socket

import pytest

from jailserve.config import load_config
from jailserve.config.magic import djb33x
from jailserve.errors import ConfigError

APP = "http-socket = 127.0.0.1:9999\n"

CASES = [
    # --- §1.2 ini files ---------------------------------------------------------------------
    dict(id="basic-key-value", ref="§1.2 split at the first '='", files={"a.ini": "[uwsgi]\nsocket = :8000\n"},
         argv=["a.ini"], get={"socket": [":8000"]}),
    dict(id="strip-blanks", ref="§1.2 space, tab and \\r stripped", files={"a.ini": "[uwsgi]\n \t processes \t=\t 4 \t\r\n"},
         argv=["a.ini"], get={"processes": 4}),
    dict(id="crlf-lines", ref="§1.2 lines split on \\n only, \\r stripped", files={"a.ini": "[uwsgi]\r\nmaster = true\r\nprocesses = 3\r\n"},
         argv=["a.ini"], get={"master": True, "processes": 3}),
    dict(id="comments", ref="§1.2 ';' or '#' as first non-blank character",
         files={"a.ini": "[uwsgi]\n; processes = 9\n# processes = 8\n   ; processes = 7\nprocesses = 2\n"},
         argv=["a.ini"], get={"processes": 2}),
    dict(id="no-inline-comments", ref="§1.2 `socket = :8000 ; main` gives ':8000 ; main'",
         files={"a.ini": "[uwsgi]\nsocket = :8000 ; main\n"}, argv=["a.ini"], get={"socket": [":8000 ; main"]}),
    dict(id="only-uwsgi-section", ref="§1.2 only the requested section, default uwsgi",
         files={"a.ini": "[other]\nprocesses = 9\n[uwsgi]\nprocesses = 2\n[more]\nprocesses = 7\n"},
         argv=["a.ini"], get={"processes": 2}),
    dict(id="file-colon-section", ref="§1.2 `file.ini:section` selects another section",
         files={"a.ini": "[uwsgi]\nprocesses = 2\n[prod]\nprocesses = 8\n"}, argv=["a.ini:prod"], get={"processes": 8}),
    dict(id="colon-section-rereads-last", ref="§1.2 `:section` re-reads the last ini file loaded",
         files={"a.ini": "[uwsgi]\nmaster = true\n[extra]\nprocesses = 5\n"}, argv=["--ini", "a.ini", "--ini", ":extra"],
         get={"master": True, "processes": 5}),
    dict(id="section-missing-is-warning", ref="§1.2 section missing: only a warning",
         files={"a.ini": "[uwsgi]\nprocesses = 2\n"}, argv=["a.ini:nope"], get={"processes": 1}, warn="not found"),
    dict(id="bare-key-is-true", ref="§1.2 a line with no '=' is a key with the empty value; §1.3 empty = true",
         files={"a.ini": "[uwsgi]\nmaster\nvacuum\n"}, argv=["a.ini"], get={"master": True, "vacuum": True}),
    dict(id="first-equals-splits", ref="§1.2 split at the first '='", files={"a.ini": "[uwsgi]\nenv = A=B=C\n"},
         argv=["a.ini"], get={"env": [("A", "B=C")]}),
    dict(id="quotes-are-literal", ref="§1.2 no quoting: quotes kept", files={"a.ini": '[uwsgi]\nchdir = "/srv"\n'},
         argv=["a.ini"], get={"chdir": '"/srv"'}),
    dict(id="no-continuation", ref="§1.2 no line continuation: a trailing backslash is kept",
         files={"a.ini": "[uwsgi]\nchdir = /srv\\\nprocesses = 3\n"}, argv=["a.ini"], get={"chdir": "/srv\\", "processes": 3}),
    dict(id="keys-case-sensitive", ref="§1.2 keys are case-sensitive", files={"a.ini": "[uwsgi]\nAppDir = /a\nchdir = %(appdir)\ncallable = %(AppDir)\n"},
         argv=["a.ini"], get={"chdir": "%(appdir)", "callable": "/a"}),
    dict(id="keys-case-misspelled", ref="§1.2 `Master` is not `master` (uWSGI: a silent placeholder); jailserve: did you mean",
         files={"a.ini": "[uwsgi]\nMaster = true\n"}, argv=["a.ini"], error=("did you mean 'master'", "a.ini:2", "Master")),
    dict(id="repeated-keys-in-order", ref="§1.2 repeated keys appended in order",
         files={"a.ini": "[uwsgi]\npythonpath = /a\npythonpath = /b\npythonpath = /a\n"}, argv=["a.ini"],
         get={"pythonpath": ["/a", "/b", "/a"]}),
    dict(id="scalar-last-wins", ref="§1.2 scalar options keep the last value", files={"a.ini": "[uwsgi]\nprocesses = 2\nprocesses = 4\n"},
         argv=["a.ini"], get={"processes": 4}),
    dict(id="last-line-without-newline", ref="§1.2 a final line without \\n is parsed", files={"a.ini": "[uwsgi]\nprocesses = 6"},
         argv=["a.ini"], get={"processes": 6}),
    dict(id="malformed-section", ref="§1.2 uWSGI drops the last character of '[section'; jailserve: error",
         files={"a.ini": "[uwsgi]\nmaster = true\n[uwsgi\nprocesses = 2\n"}, argv=["a.ini"], error=("section header", "a.ini:3", None)),
    # --- §1.3 values --------------------------------------------------------------------------
    dict(id="bool-false-words", ref="§1.3 false/off/no/0 (any case) set 0",
         files={"a.ini": "[uwsgi]\nmaster = FALSE\nvacuum = off\nlazy-apps = No\ndie-on-term = 0\n"}, argv=["a.ini"],
         get={"master": False, "vacuum": False, "lazy-apps": False, "die-on-term": False}),
    dict(id="bool-true-words", ref="§1.3 any other value sets 1; empty = true",
         files={"a.ini": "[uwsgi]\nmaster = true\nvacuum = yes\nlazy-apps =\ndie-on-term = 1\n"}, argv=["a.ini"],
         get={"master": True, "vacuum": True, "lazy-apps": True, "die-on-term": True}),
    dict(id="bool-word-refused", ref="§1.3 uWSGI takes `maybe` as true; jailserve: error", files={"a.ini": "[uwsgi]\nmaster = maybe\n"},
         argv=["a.ini"], error=("not a boolean", "a.ini:2", "master")),
    dict(id="int-no-value-is-1", ref="§1.3 integers: no value -> 1", files={"a.ini": "[uwsgi]\nprocesses =\n"}, argv=["a.ini"],
         get={"processes": 1}),
    dict(id="int-trailing-garbage", ref="§1.3 `4x` -> warning and 4 in uWSGI; jailserve: error",
         files={"a.ini": "[uwsgi]\nprocesses = 4x\n"}, argv=["a.ini"], error=("not an integer", "a.ini:2", "processes")),
    dict(id="int-negative", ref="§1.3 negative -> exits", files={"a.ini": "[uwsgi]\nharakiri = -5\n"}, argv=["a.ini"],
         error=("negative", "a.ini:2", "harakiri")),
    # --- §1.4 command line --------------------------------------------------------------------
    dict(id="cli-name-value", ref="§1.4 --name value", argv=["--processes", "3"], get={"processes": 3}),
    dict(id="cli-name-equals", ref="§1.4 --name=value", argv=["--processes=3", "--socket=:1234"],
         get={"processes": 3, "socket": [":1234"]}),
    dict(id="cli-prefix", ref="§1.4 unambiguous prefixes of long names are accepted", argv=["--wsgi-fil", "x.py"],
         get={"wsgi-file": "x.py"}),
    dict(id="cli-ambiguous-prefix", ref="§1.4 an ambiguous option -> error", argv=["--pidf", "x"], error=("ambiguous", None, "pidf")),
    dict(id="cli-unknown", ref="§1.4 an unknown option -> error", argv=["--no-such-thing", "1"], error=("unknown option", None, "no-such-thing")),
    dict(id="cli-missing-value", ref="§1.4 a missing required value -> error", argv=["--processes"], error=("requires a value", None, "processes")),
    dict(id="cli-short-separate", ref="§1.4 -p processes, -s socket", argv=["-p", "4", "-s", ":7000"],
         get={"processes": 4, "socket": [":7000"]}),
    dict(id="cli-short-attached", ref="§1.4 getopt: -p4", argv=["-p4"], get={"processes": 4}),
    dict(id="cli-short-flags-cluster", ref="§1.4 -M master, -T enable-threads (getopt clusters flags)", argv=["-MT"],
         get={"master": True, "enable-threads": True}),
    dict(id="cli-flag-then-positional", ref="§1.4 no_argument options take no value on the CLI",
         files={"a.ini": "[uwsgi]\nprocesses = 2\n"}, argv=["--master", "a.ini"], get={"master": True, "processes": 2}),
    dict(id="cli-single-dash-long", ref="§1.4 `-jail-ip4` is a doc typo read as short options by uWSGI; jailserve: the long option",
         argv=["-http-socket", ":8001", "-processes", "2"], get={"http-socket": [":8001"], "processes": 2}, warn="read as '--http-socket'"),
    dict(id="positional-after-dash-options", ref="§1.4 positionals are processed after all dash options",
         files={"a.ini": "[uwsgi]\nprocesses = 2\n"}, argv=["a.ini", "--processes", "5"], get={"processes": 2},
         warn="overrides '5' from the command line"),
    dict(id="ini-option-in-cli-order", ref="§1.1 files named by --ini are parsed at that point",
         files={"a.ini": "[uwsgi]\nprocesses = 2\n"}, argv=["--ini", "a.ini", "--processes", "5"], get={"processes": 5}),
    dict(id="positional-py-is-app", ref="§1.4 python treats *.py / *.wsgi as an app file", argv=["app.py"], get={"wsgi-file": "app.py"}),
    dict(id="double-dash-ends-options", ref="§1.4 getopt: -- ends the options",
         files={"-x.ini": "[uwsgi]\nprocesses = 7\n"}, argv=["--", "-x.ini"], get={"processes": 7}),
    # --- §1.5 environment -----------------------------------------------------------------------
    dict(id="env-option", ref="§1.5 UWSGI_HTTP_SOCKET=:9090 -> http-socket", env={"UWSGI_HTTP_SOCKET": ":9090"},
         get={"http-socket": [":9090"]}),
    dict(id="env-before-cli", ref="§1.5 env options come before the command line", env={"UWSGI_PROCESSES": "2"},
         argv=["--processes", "3"], get={"processes": 3}),
    dict(id="env-internal-reloads", ref="§1.5 UWSGI_RELOADS is internal; §1.9 if-reload true when present",
         env={"UWSGI_RELOADS": "1"}, files={"a.ini": "[uwsgi]\nif-reload =\nprocesses = 4\nendif =\n"}, argv=["a.ini"],
         get={"processes": 4}, reload=True),
    dict(id="env-ref", ref="§1.5 $(VAR) replaced by the env value", env={"APPDIR": "/srv/app"},
         files={"a.ini": "[uwsgi]\nchdir = $(APPDIR)/x\n"}, argv=["a.ini"], get={"chdir": "/srv/app/x"}),
    dict(id="env-ref-colon-default", ref="§1.5 $(VAR:-default) when unset or empty", env={"EMPTY": ""},
         files={"a.ini": "[uwsgi]\nchdir = $(EMPTY:-/a)\ncallable = $(UNSET_X:-app)\n"}, argv=["a.ini"],
         get={"chdir": "/a", "callable": "app"}),
    dict(id="env-ref-dash-default", ref="§1.5 $(VAR-default) only when unset", env={"EMPTY": ""},
         files={"a.ini": "[uwsgi]\ncallable = x$(EMPTY-dflt)y\nchdir = $(UNSET_Y-/b)\n"}, argv=["a.ini"],
         get={"callable": "xy", "chdir": "/b"}),
    dict(id="env-ref-unresolved", ref="§1.5 unresolvable references are left as literal text",
         files={"a.ini": "[uwsgi]\nchdir = $(NOT_SET_ANYWHERE)\n"}, argv=["a.ini"], get={"chdir": "$(NOT_SET_ANYWHERE)"}, warn="not set"),
    dict(id="env-unknown-is-placeholder", ref="§1.10 unknown keys (env) kept as placeholders",
         env={"UWSGI_MYDIR": "/m"}, argv=["--chdir", "%(mydir)"], get={"chdir": "/m"}),
    # --- §1.6 magic variables -------------------------------------------------------------------
    dict(id="magic-d-trailing-slash", ref="§1.6 %d directory with trailing slash", files={"a.ini": "[uwsgi]\nchdir = %d\n"},
         argv=["a.ini"], get={"chdir": "{tmp}/"}),
    dict(id="magic-name-parts", ref="§1.6 %s file name, %n without extension, %e extension, %p absolute path",
         files={"app.conf.ini": "[uwsgi]\nset = s=%s\nset = n=%n\nset = e=%e\nset = p=%p\n"}, argv=["app.conf.ini"],
         placeholders={"s": "app.conf.ini", "n": "app.conf", "e": "ini", "p": "{tmp}/app.conf.ini"}),
    dict(id="magic-c-dirname", ref="§1.6 %c name of the containing directory", files={"sub/a.ini": "[uwsgi]\nset = c=%c\n"},
         argv=["sub/a.ini"], placeholders={"c": "sub"}),
    dict(id="magic-x-section", ref="§1.6 %x section name (from file:section)", files={"a.ini": "[prod]\nset = x=%x\n"},
         argv=["a.ini:prod"], placeholders={"x": "prod"}),
    dict(id="magic-percent-percent", ref="§1.6 %% -> %", files={"a.ini": "[uwsgi]\nset = v=100%%\n"}, argv=["a.ini"],
         placeholders={"v": "100%"}),
    dict(id="magic-unknown-empty", ref="§1.6 every other %<char> is replaced by the empty string (50%x without section -> 50)",
         files={"a.ini": "[uwsgi]\nset = v=50%x\nset = w=a%Zb\n"}, argv=["a.ini"], placeholders={"v": "50", "w": "ab"}, warn="%Z"),
    dict(id="magic-trailing-percent", ref="§1.6 a % as the last byte survives", files={"a.ini": "[uwsgi]\nset = v=50%"},
         argv=["a.ini"], placeholders={"v": "50%"}),
    dict(id="magic-percent-newline", ref="§1.6 magic_sub runs over the raw text: '%' then newline is an unknown "
         "variable, so the newline vanishes and the lines join (checked against uWSGI 2.0.31)",
         files={"a.ini": "[uwsgi]\nset = v=50%\nprocesses = 3\n"}, argv=["a.ini"],
         placeholders={"v": "50processes = 3"}, get={"processes": 1}, warn="joins the next line"),
    dict(id="magic-not-on-cli", ref="§1.6 magic vars are not applied to command-line values", argv=["--chdir", "%d"],
         get={"chdir": "%d"}),
    dict(id="magic-upper-first-file", ref="§1.6 upper-case = the values frozen for the first config file",
         files={"first.ini": "[uwsgi]\ninclude = other.ini\n", "other.ini": "[uwsgi]\nset = n=%n\nset = N=%N\n"},
         argv=["first.ini"], placeholders={"n": "other", "N": "first"}),
    dict(id="magic-digits", ref="§1.6 %0..%9 successive directory components", files={"x/y/a.ini": "[uwsgi]\nset = last=%c\n"},
         argv=["x/y/a.ini"], placeholders={"last": "y"}),
    dict(id="magic-static", ref="§1.6 %h hostname, %k CPU count", files={"a.ini": "[uwsgi]\nset = h=%h\nset = k=%k\n"},
         argv=["a.ini"], placeholders={"h": socket.gethostname(), "k": str(os.cpu_count())}),
    dict(id="magic-j-hash", ref="§1.6 %j 8-hex-digit djb33x hash of the absolute path", files={"a.ini": "[uwsgi]\nset = j=%j\n"},
         argv=["a.ini"], placeholders={"j": "{hash:a.ini}"}),
    # --- §1.7 placeholders ----------------------------------------------------------------------
    dict(id="placeholder-unknown-key", ref="§1.7 `myvar = foo` then `chdir = /srv/%(myvar)`",
         files={"a.ini": "[uwsgi]\nmyvar = foo\nchdir = /srv/%(myvar)\n"}, argv=["a.ini"], get={"chdir": "/srv/foo"}),
    dict(id="placeholder-first-entry", ref="§1.7 the first entry whose key is name",
         files={"a.ini": "[uwsgi]\nv = one\nv = two\nchdir = /%(v)\n"}, argv=["a.ini"], get={"chdir": "/one"}),
    dict(id="placeholder-later-definition", ref="§1.7 expansion runs after every source is read",
         files={"a.ini": "[uwsgi]\nchdir = /%(later)\nlater = x\n"}, argv=["a.ini"], get={"chdir": "/x"}),
    dict(id="placeholder-known-option", ref="§1.7 any key, known option or not", files={"a.ini": "[uwsgi]\nprocesses = 3\ncallable = app%(processes)\n"},
         argv=["a.ini"], get={"callable": "app3"}),
    dict(id="placeholder-set", ref="§1.7 set = key=value adds an entry", files={"a.ini": "[uwsgi]\nset = processes=6\n"},
         argv=["a.ini"], get={"processes": 6}),
    dict(id="placeholder-set-cli", ref="§1.7 -S key=value", argv=["-S", "base=/b", "--chdir", "%(base)/c"], get={"chdir": "/b/c"}),
    dict(id="placeholder-set-ph-option-name", ref="§1.7 set-placeholder that is a real option name -> exit",
         files={"a.ini": "[uwsgi]\nset-ph = processes=3\n"}, argv=["a.ini"], error=("option name", "a.ini:2", "set-placeholder")),
    dict(id="placeholder-math", ref="§1.7 %(a + b) with operators", files={"a.ini": "[uwsgi]\nbase = 8000\nsocket = :%(base + 1)\n"},
         argv=["a.ini"], get={"socket": [":8001"]}),
    dict(id="placeholder-concat", ref="§1.7 tokens without an operator are concatenated",
         files={"a.ini": "[uwsgi]\na = x\nb = y\ncallable = %(a b)\n"}, argv=["a.ini"], get={"callable": "xy"}),
    dict(id="placeholder-unresolved", ref="§1.7 unresolved %(x) stays literal", files={"a.ini": "[uwsgi]\ncallable = %(nothing)\n"},
         argv=["a.ini"], get={"callable": "%(nothing)"}, warn="not defined"),
    dict(id="placeholder-not-in-immediate", ref="§1.7 immediate options ran with unexpanded values (if-exists)",
         files={"a.ini": "[uwsgi]\nd = /\nif-exists = %(d)\nprocesses = 9\nendif =\n"}, argv=["a.ini"], get={"processes": 1}),
    dict(id="strict-unknown-fatal", ref="§1.7 --strict makes an unknown key fatal", files={"a.ini": "[uwsgi]\nstrict = true\nwhatever = 1\n"},
         argv=["a.ini"], error=("strict", "a.ini:3", "whatever")),
    # --- §1.8 includes ----------------------------------------------------------------------------
    dict(id="include-in-place", ref="§1.8 include parses the file right now, in place",
         files={"a.ini": "[uwsgi]\nprocesses = 2\ninclude = b.ini\nprocesses = 5\n", "b.ini": "[uwsgi]\nprocesses = 3\nmaster = true\n"},
         argv=["a.ini"], get={"processes": 5, "master": True}),
    dict(id="ini-immediate", ref="§1.1 ini is immediate", files={"a.ini": "[uwsgi]\nini = b.ini\nprocesses = 4\n", "b.ini": "[uwsgi]\nprocesses = 3\n"},
         argv=["a.ini"], get={"processes": 4}),
    dict(id="inherit-after-the-rest", ref="§1.8 inherit: entries appended at the end (template scalars override)",
         files={"a.ini": "[uwsgi]\ninherit = t.ini\nprocesses = 5\npythonpath = /a\n", "t.ini": "[uwsgi]\nprocesses = 2\npythonpath = /t\n"},
         argv=["a.ini"], get={"processes": 2, "pythonpath": ["/a", "/t"]}),
    dict(id="inherit-placeholders-not-expanded", ref="§1.8 an inherited file's %() placeholders are not re-expanded",
         files={"a.ini": "[uwsgi]\nbase = /b\ninherit = t.ini\n", "t.ini": "[uwsgi]\nchdir = %(base)/x\n"},
         argv=["a.ini"], get={"chdir": "%(base)/x"}, warn="not expanded"),
    dict(id="at-file", ref="§1.8 @(path) replaced by the content with one trailing newline removed",
         files={"a.ini": "[uwsgi]\ncallable = @(name.txt)\n", "name.txt": "myapp\n"}, argv=["a.ini"], get={"callable": "myapp"}),
    dict(id="include-loop", ref="§1.8 jailserve: a clear error on an include loop",
         files={"a.ini": "[uwsgi]\ninclude = b.ini\n", "b.ini": "[uwsgi]\ninclude = a.ini\n"}, argv=["a.ini"],
         error=("include loop", "b.ini:2", None)),
    dict(id="include-missing", ref="§1.8 include of a missing file fails", files={"a.ini": "[uwsgi]\ninclude = nothere.ini\n"},
         argv=["a.ini"], error=("does not exist", "a.ini:2", None)),
    # --- §1.9 config logic ------------------------------------------------------------------------
    dict(id="if-exists-true", ref="§1.9 if-exists: lines added when the path exists",
         files={"a.ini": "[uwsgi]\nif-exists = a.ini\nprocesses = 3\nendif =\n"}, argv=["a.ini"], get={"processes": 3}),
    dict(id="if-exists-false", ref="§1.9 if-exists: lines dropped otherwise",
         files={"a.ini": "[uwsgi]\nif-exists = /nonexistent/x\nprocesses = 3\nendif =\nmaster = true\n"}, argv=["a.ini"],
         get={"processes": 1, "master": True}),
    dict(id="if-not-exists-seed", ref="§1.9 if-not-exists (the FreeBSD devfs seed config)",
         files={"a.ini": "[uwsgi]\nif-not-exists = /nonexistent/dev/zero\n  exec-pre-jail = mount -t devfs devfs /x\nendif =\n"},
         argv=["a.ini"], get={"exec-pre-jail": ["mount -t devfs devfs /x"]}),
    dict(id="if-file-vs-dir", ref="§1.9 if-file regular file test, if-dir directory test",
         files={"a.ini": "[uwsgi]\nif-file = .\nprocesses = 9\nendif =\nif-dir = .\nmaster = true\nendif =\n"}, argv=["a.ini"],
         get={"processes": 1, "master": True}),
    dict(id="if-not-dir", ref="§1.9 if-not-dir", files={"a.ini": "[uwsgi]\nif-not-dir = a.ini\nprocesses = 4\nendif =\n"},
         argv=["a.ini"], get={"processes": 4}),
    dict(id="if-env-set-and-value", ref="§1.9 if-env VAR set, or VAR=value equal", env={"MODE": "prod"},
         files={"a.ini": "[uwsgi]\nif-env = MODE\nmaster = true\nendif =\nif-env = MODE=dev\nprocesses = 9\nendif =\n"},
         argv=["a.ini"], get={"master": True, "processes": 1}),
    dict(id="if-not-env", ref="§1.9 if-not-env", files={"a.ini": "[uwsgi]\nif-not-env = SURELY_UNSET_VAR\nprocesses = 2\nendif =\n"},
         argv=["a.ini"], get={"processes": 2}),
    dict(id="if-opt-seen-so-far", ref="§1.9 if-opt against entries seen so far",
         files={"a.ini": "[uwsgi]\nif-opt = master\nprocesses = 9\nendif =\nmaster = true\nif-opt = master=true\nvacuum = true\nendif =\n"},
         argv=["a.ini"], get={"processes": 1, "vacuum": True}),
    dict(id="if-not-opt", ref="§1.9 if-not-opt", files={"a.ini": "[uwsgi]\nif-not-opt = socket\nhttp-socket = :9000\nendif =\n"},
         argv=["a.ini"], get={"http-socket": [":9000"]}),
    dict(id="if-not-reload-first-start", ref="§1.9 if-not-reload true on the first start",
         files={"a.ini": "[uwsgi]\nif-not-reload =\nprocesses = 2\nendif =\nif-reload =\nmaster = true\nendif =\n"},
         argv=["a.ini"], get={"processes": 2, "master": False}, reload=False),
    dict(id="else-branch", ref="§1.9 else: lines after it added only if the last condition failed (master)",
         files={"a.ini": "[uwsgi]\nif-exists = /nonexistent\nprocesses = 9\nelse =\nprocesses = 3\nendif =\n"}, argv=["a.ini"],
         get={"processes": 3}),
    dict(id="end-spellings", ref="§1.9 endif, end-if, endfor, end-for or plain end end any block",
         files={"a.ini": "[uwsgi]\nif-dir = .\nprocesses = 2\nend-if =\nif-dir = .\nmaster = true\nend =\nfor = a\npythonpath = /%(_)\nend-for =\n"},
         argv=["a.ini"], get={"processes": 2, "master": True, "pythonpath": ["/a"]}),
    dict(id="underscore-is-tested-path", ref="§1.9 %(_) in a block is the tested item (the path)",
         files={"a.ini": "[uwsgi]\nif-dir = /tmp\nchdir = %(_)\nendif =\n"}, argv=["a.ini"], get={"chdir": "/tmp"}),
    dict(id="underscore-is-env-value", ref="§1.9 %(_) is the env value for if-env", env={"APPHOME": "/srv/h"},
         files={"a.ini": "[uwsgi]\nif-env = APPHOME\nchdir = %(_)\nendif =\n"}, argv=["a.ini"], get={"chdir": "/srv/h"}),
    dict(id="for-items", ref="§1.9 for = a b c, %(_) the loop item",
         files={"a.ini": "[uwsgi]\nfor = a b c\npythonpath = /p/%(_)\nendfor =\n"}, argv=["a.ini"],
         get={"pythonpath": ["/p/a", "/p/b", "/p/c"]}),
    dict(id="for-order-per-line", ref="§1.9 two lines over items a b expand to L1(a) L1(b) L2(a) L2(b)",
         files={"a.ini": "[uwsgi]\nfor = a b\npythonpath = /1/%(_)\npythonpath = /2/%(_)\nendfor =\n"}, argv=["a.ini"],
         get={"pythonpath": ["/1/a", "/1/b", "/2/a", "/2/b"]}, warn="per line"),
    dict(id="for-times", ref="§1.9 for-times = N (1..N)", files={"a.ini": "[uwsgi]\nfor-times = 3\npythonpath = /n%(_)\nendfor =\n"},
         argv=["a.ini"], get={"pythonpath": ["/n1", "/n2", "/n3"]}),
    dict(id="for-glob", ref="§1.9 for-glob = pattern", files={"a.ini": "[uwsgi]\nfor-glob = d/*.py\npythonpath = %(_)\nendfor =\n",
                                                              "d/x.py": "", "d/y.py": ""},
         argv=["a.ini"], get={"pythonpath": ["d/x.py", "d/y.py"]}),
    dict(id="for-readline", ref="§1.9 for-readline = file", files={"a.ini": "[uwsgi]\nfor-readline = list.txt\nenv = %(_)\nendfor =\n",
                                                                    "list.txt": "A=1\nB=2\n"},
         argv=["a.ini"], get={"env": [("A", "1"), ("B", "2")]}),
    dict(id="nested-true-true", ref="§1.9 uWSGI: recursive logic is fatal; jailserve: blocks nest",
         files={"a.ini": "[uwsgi]\nif-dir = .\nif-file = a.ini\nprocesses = 4\nendif =\nmaster = true\nendif =\n"}, argv=["a.ini"],
         get={"processes": 4, "master": True}),
    dict(id="nested-false-outer", ref="§1.9 uWSGI: the inner endif closes the outer block; jailserve: only the inner",
         files={"a.ini": "[uwsgi]\nif-exists = /nonexistent\nif-dir = .\nprocesses = 4\nendif =\nmaster = true\nendif =\nvacuum = true\n"},
         argv=["a.ini"], get={"processes": 1, "master": False, "vacuum": True}),
    dict(id="unclosed-block", ref="§1.9 uWSGI: the state is not reset at end of file; jailserve: error",
         files={"a.ini": "[uwsgi]\nmaster = true\nif-dir = .\nprocesses = 2\n"}, argv=["a.ini"], error=("not closed", "a.ini:3", "if-dir")),
    dict(id="stray-endif", ref="§1.9 jailserve: an endif with no open block is an error",
         files={"a.ini": "[uwsgi]\nmaster = true\nendif =\n"}, argv=["a.ini"], error=("without an open block", "a.ini:3", "endif")),
    dict(id="reevaluated-per-line", ref="§1.9 the condition is re-evaluated for each line of the block",
         files={"a.ini": "[uwsgi]\nif-not-opt = flagx\nflagx = 1\nprocesses = 4\nendif =\n"}, argv=["a.ini"],
         get={"processes": 1}, placeholders={"flagx": "1"}, warn="changed its answer"),
    # --- §1.10 unknown options and aliases -------------------------------------------------------
    dict(id="unknown-kept-as-placeholder", ref="§1.10 unknown keys are kept silently as placeholders",
         files={"a.ini": "[uwsgi]\nsome-unrelated-thing = 1\n"}, argv=["a.ini"], placeholders={"some-unrelated-thing": "1"}),
    dict(id="misspelled-option", ref="§1.10 jailserve: a misspelled option name (never used as a placeholder) is an error",
         files={"a.ini": "[uwsgi]\nproceses = 4\n"}, argv=["a.ini"], error=("did you mean 'processes'", "a.ini:2", "proceses")),
    dict(id="aliases", ref="§1.10 aliases are the same field (workers/processes, libjail/jail2, jid-file/jidfile)",
         files={"a.ini": "[uwsgi]\nworkers = 3\nuwsgi-socket = :7001\nfile = app.py\n"}, argv=["a.ini"],
         get={"processes": 3, "socket": [":7001"], "wsgi-file": "app.py"}),
]


def _render(value, tmp):
    if isinstance(value, str):
        if value.startswith("{hash:"):
            path = os.path.realpath(os.path.join(tmp, value[6:-1]))
            import sys
            return djb33x(path.encode()).to_bytes(4, sys.byteorder).hex().upper()
        return value.replace("{tmp}", os.path.realpath(tmp))
    if isinstance(value, list):
        return [_render(v, tmp) for v in value]
    return value


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_config_case(case, tmp_path, monkeypatch):
    for name, text in case.get("files", {}).items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())
    monkeypatch.chdir(tmp_path)
    argv, env = case.get("argv", []), case.get("env", {})
    if "error" in case:
        substring, where, option = case["error"]
        with pytest.raises(ConfigError) as info:
            load_config(argv, env)
        err = info.value
        assert substring in err.message, str(err)
        if where is not None:
            assert err.origin is not None and err.origin.line and f"{os.path.basename(err.origin.source)}:{err.origin.line}" == where, str(err)
        if option is not None:
            assert err.option == option, str(err)
        return
    config = load_config(argv, env)
    for name, expected in case.get("get", {}).items():
        got = config.get(name)
        if isinstance(expected, tuple) or (isinstance(expected, list) and expected and isinstance(expected[0], tuple)):
            got = [tuple(v) for v in got] if isinstance(got, list) else tuple(got)
        assert got == _render(expected, tmp_path), f"{name}: {got!r}"
    for name, expected in case.get("placeholders", {}).items():
        assert config.placeholders.get(name) == _render(expected, tmp_path), f"%({name}) = {config.placeholders.get(name)!r}"
    if "warn" in case:
        assert any(case["warn"] in str(w) for w in config.warnings), [str(w) for w in config.warnings]
    if "reload" in case:
        assert config.is_reload is case["reload"]


def test_corpus_size():
    """The issue asks for at least 60 cases, covering every rule of §1."""
    assert len(CASES) >= 60
