"""atheris fuzz target for jailserve._core.RequestParser (HTTP and uwsgi).

The input is split into feeds at points chosen from the input itself; the invariants are:
only HTTPError escapes, every event is well formed, the parse is the same whatever the split,
and a failed parser stays failed.  Seeds: tests/http/ (run.sh builds the corpus from it).
"""
import sys

import atheris

with atheris.instrument_imports():
    from jailserve import _core

EVENT_KINDS = {"head", "vars", "environ", "body", "end"}


def run(data, protocol, cuts, environ):
    p = _core.RequestParser(buffer_size=512, max_headers=32, protocol=protocol,
                            environ={} if environ else None)
    events = []
    error = None
    prev = 0
    try:
        for c in sorted(set(cuts)) + [len(data)]:
            events += p.feed(data[prev:c])
            prev = c
        events += p.feed(b"")
    except _core.HTTPError as e:
        error = (e.status, e.code)
        assert e.status in (400, 414, 417, 431, 501, 505), e.status
        try:
            p.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        except _core.HTTPError:
            pass
        else:
            raise AssertionError("a failed parser accepted more input")
    merged = []
    for ev in events:
        assert ev[0] in EVENT_KINDS, ev
        if ev[0] == "body":
            assert isinstance(ev[1], bytes) and ev[1]
            if merged and merged[-1][0] == "body":
                merged[-1] = ("body", merged[-1][1] + ev[1])
                continue
        if ev[0] == "environ":
            ev = ("environ", tuple(sorted(ev[1].items())))
        merged.append(ev)
    return merged, error


# No C coverage here (the extension is built by gcc without sanitizer coverage), so give
# libFuzzer a Python-level signal: one instrumented branch per outcome (error rule, event
# kind, event count) keeps inputs that reach a new rule in the corpus.
_CODES = sorted(_core.ERRORS)
_src = ["def observe(kinds, code):"]
for _i, _c in enumerate(_CODES):
    _src.append("    %s code == %r:\n        pass" % ("if" if _i == 0 else "elif", _c))
_src.append("    for k in kinds:")
for _k in sorted(EVENT_KINDS):
    _src.append("        if k == %r:\n            pass" % _k)
_src.append("    n = len(kinds)\n    if n > 1:\n        pass\n    if n > 3:\n        pass\n"
            "    if n > 6:\n        pass")
exec("\n".join(_src))
observe = atheris.instrument_func(observe)   # noqa: F821 (defined by exec)


def TestOneInput(raw):
    fdp = atheris.FuzzedDataProvider(raw)
    protocol = "uwsgi" if fdp.ConsumeBool() else "http"
    environ = fdp.ConsumeBool()
    ncuts = fdp.ConsumeIntInRange(0, 8)
    cuts = [fdp.ConsumeIntInRange(0, 4096) for _ in range(ncuts)]
    data = fdp.ConsumeBytes(fdp.remaining_bytes())
    cuts = [c % (len(data) + 1) for c in cuts]
    whole = run(data, protocol, [], environ)
    observe([e[0] for e in whole[0]], whole[1][1] if whole[1] else "")
    split = run(data, protocol, cuts, environ)
    # the same events whatever the split; an error may only move later (never earlier)
    if whole[1] is None and split[1] is None:
        assert whole[0] == split[0], (whole, split)
    else:
        assert whole[1] == split[1], (whole[1], split[1])


def main():
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
