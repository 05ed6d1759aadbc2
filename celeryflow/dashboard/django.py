"""The dashboard in a Django project::

    # urls.py
    from django.contrib.admin.views.decorators import staff_member_required
    from celeryflow.dashboard.django import dashboard_urls
    urlpatterns = [path("flows/", include(dashboard_urls(flow, wrap=staff_member_required)))]

``wrap`` puts the view behind your project's own login; the dashboard's forms carry
their own CSRF token (Django's middleware is bypassed for this view only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, re_path
from django.views.decorators.csrf import csrf_exempt

from ..flow import Flow
from ..store import Store
from .core import MAX_BODY, Dashboard
from .security import Auth
from .web import Request

__all__ = ["dashboard_urls", "dashboard_view"]

View = Callable[..., HttpResponse]


def dashboard_view(
    flow: Flow | None = None,
    *,
    store: Store | None = None,
    token: str | None = None,
    username: str | None = None,
    password: str | None = None,
) -> View:
    """The view behind :func:`dashboard_urls`; ``sub`` is the path inside it."""
    auth = Auth.from_env(token=token, username=username, password=password)
    dashboard = Dashboard(flow, store=store, auth=auth)

    @csrf_exempt
    def view(request: HttpRequest, sub: str = "") -> HttpResponse:
        form: dict[str, str] = {}
        if request.method == "POST":
            if int(request.META.get("CONTENT_LENGTH") or 0) > MAX_BODY:
                return HttpResponse("body too large", status=413)
            form = {k: request.POST.get(k, "") for k in request.POST}
        full = request.path
        inner = "/" + sub
        root = full[: len(full) - len(sub)].rstrip("/") if full.endswith(sub) else ""
        answer = dashboard.handle(
            Request(
                method=request.method or "GET",
                path=inner,
                root=root,
                query={k: request.GET.get(k, "") for k in request.GET},
                form=form,
                headers={k.lower(): v for k, v in request.headers.items()},
                cookies=dict(request.COOKIES),
            )
        )
        response = HttpResponse(answer.body, status=answer.status, content_type=answer.content_type)
        for header, value in answer.headers:
            if header.lower() == "set-cookie":
                name, _, rest = value.partition("=")
                cookie_value = rest.partition(";")[0]
                response.set_cookie(
                    name,
                    cookie_value,
                    path=root or "/",
                    httponly=True,
                    samesite="Strict",
                    secure=request.is_secure(),
                )
            else:
                response[header] = value
        return response

    return view


def dashboard_urls(
    flow: Flow | None = None, *, wrap: Callable[[View], Any] | None = None, **options: Any
) -> list[URLPattern]:
    """URL patterns for ``include()``; ``wrap`` (``staff_member_required``...) guards
    every page."""
    view = dashboard_view(flow, **options)
    if wrap is not None:
        view = wrap(view)
    return [re_path(r"^(?P<sub>.*)$", view)]
