"""An app that uses uwsgidecorators' @lock (uWSGI's own helper module) around its work."""
import uwsgi
import uwsgidecorators


@uwsgidecorators.lock
def critical():
    return uwsgi.is_locked()


def application(environ, start_response):
    inside = critical()
    body = f"inside={inside} after={uwsgi.is_locked()} worker={uwsgi.worker_id()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
