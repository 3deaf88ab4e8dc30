"""Rendering the portal's HTML pages: language, direction, CSRF token, one layout.

Pages are server-rendered Jinja2 templates in ``portal/templates`` (autoescaped), with
text in gettext catalogs of domain ``portal`` (``delivery/locale/<lang>/LC_MESSAGES/
portal.po``), in the languages the emails speak. The language is the ``lang`` query
parameter (which also sets the ``lang`` cookie), else that cookie, else the default the
page passes (the request's language), else English. No page needs JavaScript; the CSP
forbids inline script and style.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse

from delivery.i18n import direction, environment
from portal import csrf
from release.validation import SUPPORTED_LANGUAGES

TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")
DOMAIN = "portal"
LANG_COOKIE = "lang"
LANGUAGE_NAMES = {"en": "English", "ar": "العربية", "zh-Hans": "简体中文"}


def language(request: Request, default: str | None = None) -> str:
    """The page's language (see the module docstring)."""
    for candidate in (
        request.query_params.get("lang"),
        request.cookies.get(LANG_COOKIE),
        default,
    ):
        if candidate in SUPPORTED_LANGUAGES:
            return candidate
    return "en"


def render(
    request: Request,
    template: str,
    *,
    status_code: int = 200,
    lang: str | None = None,
    **context: Any,
) -> HTMLResponse:
    """Render ``template`` for ``request`` in its language, with the CSRF token."""
    tag = language(request, lang)
    env = environment(tag, DOMAIN, TEMPLATES)
    html = env.get_template(template).render(
        request=request,
        lang=tag,
        dir=direction(tag),
        csrf_field=csrf.FIELD,
        csrf_token=csrf.token_for(request),
        languages=[(t, LANGUAGE_NAMES.get(t, t)) for t in SUPPORTED_LANGUAGES],
        path=request.url.path,
        **context,
    )
    response = HTMLResponse(html, status_code=status_code)
    csrf.attach(request, response)
    if request.query_params.get("lang") == tag:
        response.set_cookie(LANG_COOKIE, tag, secure=True, httponly=True, samesite="lax")
    return response
