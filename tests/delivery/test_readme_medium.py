"""The package README in both media: a ZIP part (unchanged) and a disc image.

Tables over language × medium: the disc text never speaks of ZIP files, unzipping, links,
expiry or previews (in the words each translation uses), placeholders are filled, the HTML
parses and carries ``lang``/``dir``, and both catalogs translate every README string.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from html.parser import HTMLParser

import pytest
from babel.dates import format_date
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from delivery.disc import volume_label
from delivery.i18n import LOCALE_DIR, TEMPLATE_DIR
from delivery.packaging import readme
from delivery.packaging.readme import Medium, render_readmes

REFERENCE = "CR-7KQ4-M2XD-9"
LABEL = volume_label(REFERENCE)  # CR_7KQ4_M2XD_9
CONTACT = "Imaging desk, +44 20 7946 0000"
CREATED = datetime(2026, 3, 2, tzinfo=UTC)
EXPIRES = datetime(2026, 4, 1, tzinfo=UTC)
LANGUAGES = ["en", "ar", "zh-Hans", "fr"]  # fr: no catalog, falls back to English
MEDIA: list[Medium] = ["zip", "disc"]
CATALOGS = {"ar": "ar", "zh-Hans": "zh_Hans"}
DIRECTION = {"en": "ltr", "ar": "rtl", "zh-Hans": "ltr", "fr": "ltr"}


def render(
    language: str, medium: Medium = "zip", *, expires: datetime | None = EXPIRES, part: int = 1,
    parts: int = 1,
) -> tuple[str, str]:  # fmt: skip
    return render_readmes(
        language=language,
        reference=REFERENCE,
        contact=CONTACT,
        created=CREATED,
        expires=expires,
        part=part,
        parts=parts,
        studies=2,
        series=4,
        instances=15,
        medium=medium,
        label=LABEL if medium == "disc" else None,
    )


class Page(HTMLParser):
    """Tags checked for balance, the ``<html>`` attributes, and the visible text."""

    VOID = frozenset({"meta", "br", "hr", "img", "link", "input"})

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.doctype = ""
        self.html: dict[str, str | None] = {}
        self.open: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []
        self._in_style = False
        self.feed(html)
        self.close()

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "html":
            self.html = dict(attrs)
        self._in_style = tag == "style"
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.open[-1:] or 'nothing'}")
        else:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        if not self._in_style:
            self.text.append(data)


# -- ZIP: the text as it was before the disc variant ----------------------------------------

# SHA-256 of (README.txt, README.html), rendered before the disc variant existed.
ZIP_DIGESTS = {
    ("en", "expiring"): ("ce290c2968ea92910b31e5039ee6513e27b0e7860592413b7e958e31241166e5",
                         "e076d8953fd0af43f381efbef39e9012f054054f01a6c2e11851430c0def2c1b"),
    ("en", "parts"): ("b07307738378f5bdaf51a7081d5013c5d8a1aeeb0291d8454327929278db6765",
                      "39911fc8f44f30cef217d00ff60565035c95182b60874c97ad1f6d78c97e861b"),
    ("ar", "expiring"): ("d8de12959e4381d42e737ec1c821522820f2e4ea751f2e6be728795f558afe10",
                         "3fe9dfff863aa4c89d6386d91962a0df635a083284a43073d9b80a8bee2150e0"),
    ("ar", "parts"): ("a50fe32f73d62bef1e47f24f3ba42a4ed0f763b2703e21e7a0072cab1a050235",
                      "203bba48357b64b0fa6ed74b4889d13c8502885ae8b7bf1ae005ff2a7673c2ef"),
    ("zh-Hans", "expiring"): ("cf7da6c4b4f8447848dc412e547fa386a7d55aa2bb49974fe851a1b4d0993f83",
                              "c0b7ed49c386bb1e7071af6cd484b89261820969ece5c85bcb6741b03d03d0e6"),
    ("zh-Hans", "parts"): ("055750e7f0f9717fc0ed864fd6c5b651dd69921d01f7f16cc76ec6c2306c9519",
                           "8e23c780cda91dcf90c76efed38eeb9637966f9566a768c81d1ca84e6e0a5f74"),
    ("fr", "expiring"): ("e6fe8f20eb06f451ffa9b0b124531320db68f89097cedbf0634cc72895ff67a5",
                         "53851fcf42ea87e97710142648ebee5c3639256aaca2707e501a2286f0afd470"),
    ("fr", "parts"): ("deafc0fd93f397e8208c9e35ac2fc7458018731c0568a98dc91bd4f919763146",
                      "7c68b22002885870c69f27a69d4b8c9ad20c0b20318b221249ea02a4b036b323"),
}  # fmt: skip
#: case -> (expires, part, parts)
CASES: dict[str, tuple[datetime | None, int, int]] = {
    "expiring": (EXPIRES, 1, 1),
    "parts": (None, 2, 3),
}

# The English text in full, so a change shows as a readable diff.
ZIP_EN = """\
Your medical images
========================================

Reference: CR-7KQ4-M2XD-9
Prepared on March 2, 2026.
The download link works until April 1, 2026. Keep your own copy of this file.

What this is
----------------------------------------
This file holds copies of your medical images (for example X-ray, CT, MRI or ultrasound) in \
DICOM, the standard format hospitals use. It replaces the CD you might otherwise have been given.
Examinations: 2. Image series: 4. Images: 15.
The PREVIEW folder has one small picture of each series for a quick look. These pictures are \
not good enough for a diagnosis.

First, unzip the file
----------------------------------------
Most viewers cannot open images while they are still inside the ZIP file. Unzip (extract) the \
whole file first, then open the folder you get, or the file called DICOMDIR in it.

On a Windows computer
----------------------------------------
Right-click the ZIP file and choose "Extract All". Then install a free viewer, for example:
  * Weasis (free, for Windows, Mac and Linux): https://weasis.org
  * MicroDicom (free for personal use): https://www.microdicom.com
  * RadiAnt DICOM Viewer (free to try): https://www.radiantviewer.com
In the viewer, open the DICOMDIR file or the unzipped folder.

On a Mac
----------------------------------------
Double-click the ZIP file to unzip it. Then install a free viewer, for example:
  * Horos (free, for Mac): https://horosproject.org
  * OsiriX Lite (free, for Mac): https://www.osirix-viewer.com
  * Weasis (free, for Windows, Mac and Linux): https://weasis.org
In the viewer, open the DICOMDIR file or the unzipped folder.

On an iPhone, iPad or Android phone
----------------------------------------
A phone is fine for a quick look. In the Files app, tap the ZIP file to unzip it. Install a \
free DICOM viewer app from the App Store or Google Play (search for "DICOM viewer"), then open \
the unzipped folder with it. The pictures in the PREVIEW folder open in any photo app.
  * IMAIOS DICOM Viewer (free, for iPhone, iPad and Android): \
https://www.imaios.com/en/imaios-dicom-viewer

Sharing your images with a doctor
----------------------------------------
Send your doctor the whole ZIP file, unchanged: doctors need the DICOM images, not only the \
previews. You can copy it onto a USB stick, or use the upload service of your doctor's \
hospital. Large files often cannot be sent by email.
These images are private information about your health. Keep the file safe and share it only \
with people you trust.

Questions?
----------------------------------------
Contact: Imaging desk, +44 20 7946 0000
Please give your reference CR-7KQ4-M2XD-9 when you get in touch.
"""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.mark.parametrize(("language", "case"), list(ZIP_DIGESTS))
def test_zip_text_is_unchanged(language: str, case: str) -> None:
    expires, part, parts = CASES[case]
    text, html = render(language, "zip", expires=expires, part=part, parts=parts)
    assert (_sha256(text), _sha256(html)) == ZIP_DIGESTS[language, case]


def test_zip_english_text_in_full_and_zip_is_the_default() -> None:
    text, html = render("en")
    assert text == ZIP_EN
    default = render_readmes(
        language="en", reference=REFERENCE, contact=CONTACT, created=CREATED, expires=EXPIRES,
        part=1, parts=1, studies=2, series=4, instances=15,
    )  # fmt: skip
    assert default == (text, html)


# -- disc: nothing about ZIP files, links or expiry, in any language ------------------------

# Words the ZIP text uses, per language, for what a disc does not have: the ZIP file and
# unzipping (extracting), the download link and its end date, the PREVIEW folder. Each is
# checked to be in the ZIP text, so the lists follow the translations.
ZIP_WORDS = {
    "en": ("zip", "unzip", "extract", "download", "link", "preview"),
    "ar": ("zip", "ضغط", "استخر", "رابط", "تنزيل", "preview"),
    "zh-Hans": ("zip", "解压", "提取", "链接", "下载", "有效期", "preview"),
    "fr": ("zip", "unzip", "extract", "download", "link", "preview"),
}
# Further words for expiry no README uses today; none may appear on a disc either.
EXPIRY_WORDS = {
    "en": ("expir",),
    "ar": ("صلاحية", "تنتهي", "ينتهي", "انتهاء"),
    "zh-Hans": ("过期", "到期", "失效"),
    "fr": ("expir",),
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_zip_words_are_those_the_zip_text_uses(language: str) -> None:
    text, html = render(language, "zip")
    for word in ZIP_WORDS[language]:
        assert word in text.lower() and word in html.lower(), word


@pytest.mark.parametrize("language", LANGUAGES)
def test_disc_text_never_mentions_zip_link_or_expiry(language: str) -> None:
    text, html = render(language, "disc", expires=EXPIRES)
    visible = " ".join(Page(html).text)
    expiry_date = format_date(EXPIRES, format="long", locale=language.replace("-", "_"))
    for shown in (text.lower(), html.lower(), visible.lower()):
        for word in (*ZIP_WORDS[language], *EXPIRY_WORDS[language]):
            assert word not in shown, word
        assert expiry_date.lower() not in shown


@pytest.mark.parametrize("language", ["ar", "zh-Hans"])
def test_disc_text_is_translated_throughout(language: str) -> None:
    english, _ = render("en", "disc")
    text, _ = render(language, "disc")
    sentences = [ln for ln in english.splitlines() if " " in ln and "http" not in ln]
    assert [ln for ln in sentences if ln in text] == []


# -- both media: placeholders and HTML ------------------------------------------------------


@pytest.mark.parametrize("medium", MEDIA)
@pytest.mark.parametrize("language", LANGUAGES)
def test_placeholders_are_filled(language: str, medium: Medium) -> None:
    text, html = render(language, medium)
    created = format_date(CREATED, format="long", locale=language.replace("-", "_"))
    for shown in (text, html):
        assert re.search(r"%\(|\{\{|\}\}|\{%|%\}", shown) is None
        assert REFERENCE in shown and CONTACT in shown and created in shown
        assert "15" in shown and "DICOMDIR" in shown
        for viewer in ("Weasis", "MicroDicom", "RadiAnt", "Horos", "OsiriX Lite"):
            assert viewer in shown
        # The volume label names the disc where the patient looks for it (Windows, Mac).
        assert shown.count(LABEL) == (2 if medium == "disc" else 0)


@pytest.mark.parametrize("medium", MEDIA)
@pytest.mark.parametrize("language", LANGUAGES)
def test_html_parses_with_lang_and_dir(language: str, medium: Medium) -> None:
    _, html = render(language, medium)
    page = Page(html)
    assert page.doctype.lower() == "doctype html"
    assert page.html == {"lang": language, "dir": DIRECTION[language]}
    assert page.errors == [] and page.open == []
    assert "<ul>\n</ul>" not in html  # no empty list for a place without viewers


def test_disc_wording_in_english() -> None:
    text, _ = render("en", "disc")
    assert "This disc holds copies of your medical images" in text
    assert "First, open the disc" in text
    assert f'click the disc drive named "{LABEL}"' in text  # Windows
    assert f'A disc icon named "{LABEL}" appears on the desktop' in text  # Mac
    assert "including the DICOMDIR file and the DICOM folder" in text
    assert "Give your doctor this disc" in text
    assert "Keep the disc safe" in text and "Keep the file safe" not in text


def test_a_disc_needs_its_label_and_is_one_part() -> None:
    with pytest.raises(ValueError, match="volume label"):
        render_readmes(
            language="en", reference=REFERENCE, contact=CONTACT, created=CREATED, expires=None,
            part=1, parts=1, studies=1, series=1, instances=1, medium="disc",
        )  # fmt: skip
    with pytest.raises(ValueError, match="one part"):
        render("en", "disc", part=1, parts=2)


# -- catalogs ---------------------------------------------------------------------------------


def readme_msgids() -> set[str]:
    """Every msgid of the README: literal in the templates, or data in delivery.packaging.readme."""
    found = extract_from_dir(
        str(TEMPLATE_DIR),
        method_map=[("**/readme*.j2", "jinja2"), ("**.j2", "ignore")],
        options_map={"**/readme*.j2": {"extensions": "jinja2.ext.i18n"}},
    )
    return {msg for _, _, msg, _, _ in found if isinstance(msg, str)} | readme.MESSAGES


def test_readme_msgids_are_found() -> None:
    ids = readme_msgids()
    assert "First, open the disc" in ids and "First, unzip the file" in ids
    assert {p.how for p in readme.DISC_PLACES} <= ids


@pytest.mark.parametrize("language", ["ar", "zh-Hans"])
def test_catalog_translates_every_readme_string(language: str) -> None:
    po = LOCALE_DIR / CATALOGS[language] / "LC_MESSAGES" / "readme.po"
    with po.open("rb") as f:
        catalog = read_po(f)
    placeholder = re.compile(r"%\(\w+\)s")
    for msgid in sorted(readme_msgids()):
        message = catalog.get(msgid)
        assert message is not None and message.string, f"{language}: untranslated: {msgid!r}"
        assert not message.fuzzy, msgid
        assert sorted(placeholder.findall(str(message.string))) == sorted(
            placeholder.findall(msgid)
        ), msgid
