"""The languages patients' messages and pages exist in, apart from the validation that
checks them (:mod:`release.validation`), so that ``courier request --help`` can name
them without loading the validators (phonenumbers, email_validator)."""

SUPPORTED_LANGUAGES: tuple[str, ...] = ("en", "ar", "zh-Hans")
"""Languages the patient's messages and pages exist in (BCP 47 tags)."""
