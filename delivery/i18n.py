"""Translations for everything a patient reads: messages, package READMEs, portal pages.

Catalogs are plain gettext ``.po`` files under ``delivery/locale/<locale>/LC_MESSAGES/
<domain>.po``, read with Babel at run time (no compiled ``.mo`` is kept in the tree), so a
translator adds a language by adding a catalog and its tag to
``release.validation.SUPPORTED_LANGUAGES``. English is the source language: its text is
the ``msgid`` itself, and a language or message without a translation falls back to it.

Language tags are BCP 47 (``en``, ``ar``, ``zh-Hans``); catalog folders use Babel's
locale names (``ar``, ``zh_Hans``).

Domains: ``messages`` (emails, SMS), ``readme`` (the package's README), ``portal``.
"""

from __future__ import annotations

import functools
import gettext
import io
from pathlib import Path
from typing import Literal

import jinja2
from babel import Locale, UnknownLocaleError
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

LOCALE_DIR = Path(__file__).with_name("locale")
TEMPLATE_DIR = Path(__file__).with_name("templates")
SOURCE_LANGUAGE = "en"


def locale_name(tag: str) -> str:
    """The Babel locale name for a BCP 47 tag (``zh-Hans`` → ``zh_Hans``)."""
    return tag.replace("-", "_")


@functools.cache
def translations(tag: str, domain: str) -> gettext.NullTranslations:
    """The catalog for ``tag`` in ``domain``; English (identity) when there is none."""
    po = LOCALE_DIR / locale_name(tag) / "LC_MESSAGES" / f"{domain}.po"
    if tag == SOURCE_LANGUAGE or not po.is_file():
        return gettext.NullTranslations()
    with po.open("rb") as f:
        catalog = read_po(f, locale=locale_name(tag), domain=domain)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return Translations(fp=buf, domain=domain)


def direction(tag: str) -> Literal["ltr", "rtl"]:
    """``rtl`` for right-to-left scripts (Arabic, Hebrew…), else ``ltr``."""
    try:
        order = Locale.parse(locale_name(tag)).character_order
    except (ValueError, UnknownLocaleError):
        return "ltr"
    return "rtl" if order == "right-to-left" else "ltr"


@functools.cache
def environment(tag: str, domain: str, template_dir: Path = TEMPLATE_DIR) -> jinja2.Environment:
    """A Jinja2 environment over ``template_dir`` (default ``delivery/templates``)
    speaking ``tag``.

    HTML templates (``*.html.j2``) are autoescaped; text templates are not. Templates
    mark text with ``{% trans %}…{% endtrans %}`` or ``_("…")``.
    """
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=jinja2.StrictUndefined,
        extensions=["jinja2.ext.i18n"],
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_translations(translations(tag, domain), newstyle=True)  # type: ignore[attr-defined]
    env.globals["lang"] = tag
    env.globals["dir"] = direction(tag)
    return env


def render(template: str, tag: str, domain: str, **context: object) -> str:
    """Render ``template`` in language ``tag`` with ``context``."""
    return environment(tag, domain).get_template(template).render(**context)
