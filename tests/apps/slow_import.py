"""An app whose import takes a while (SLOW_MARK: a file created when the import starts)."""
import os
import time

open(os.environ["SLOW_MARK"], "w").close()
time.sleep(float(os.environ.get("SLOW_SECONDS", "1.5")))


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
    return [b"slow"]
