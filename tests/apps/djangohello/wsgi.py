"""A one-file Django project: settings, one view, the WSGI application (module = djangohello.wsgi)."""
import django
from django.conf import settings
from django.http import HttpResponse
from django.urls import path

settings.configure(
    DEBUG=False, ALLOWED_HOSTS=["*"], SECRET_KEY="test-only-not-secret", ROOT_URLCONF=__name__,
    MIDDLEWARE=[], INSTALLED_APPS=[], USE_TZ=True,
)
django.setup()


def hello(request):
    return HttpResponse(f"Hello from Django {request.method} {request.GET.get('q', '')}")


urlpatterns = [path("", hello)]

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
