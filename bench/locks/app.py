"""The same WSGI app under uWSGI 2.0.31 and under jailserve: GET /?n=N&lock=K times N
uwsgi.lock(K)/uwsgi.unlock(K) round trips inside the worker and answers with JSON
{"n": N, "seconds": S, "per_second": R}.  Both servers provide `import uwsgi`."""
import json
import time
from urllib.parse import parse_qs

import uwsgi


def application(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    n = int(query.get("n", ["100000"])[0])
    k = int(query.get("lock", ["0"])[0])
    lock, unlock = uwsgi.lock, uwsgi.unlock
    start = time.perf_counter()
    for _ in range(n):
        lock(k)
        unlock(k)
    seconds = time.perf_counter() - start
    body = json.dumps({"n": n, "seconds": seconds, "per_second": n / seconds}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
