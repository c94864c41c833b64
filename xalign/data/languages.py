"""English names of languages, for the released prompt "... Answer in {name}:". Covers the
52 languages of Bactrian-X (ISO 639-1 codes, as that dataset names its files); a run's
``data.language_names`` adds others."""

from __future__ import annotations

from typing import Mapping

from xalign.suggest import did_you_mean

LANGUAGE_NAMES = {
    "af": "Afrikaans", "ar": "Arabic", "az": "Azerbaijani", "bn": "Bengali", "cs": "Czech",
    "de": "German", "en": "English", "es": "Spanish", "et": "Estonian", "fa": "Persian",
    "fi": "Finnish", "fr": "French", "gl": "Galician", "gu": "Gujarati", "he": "Hebrew",
    "hi": "Hindi", "hr": "Croatian", "id": "Indonesian", "it": "Italian", "ja": "Japanese",
    "ka": "Georgian", "kk": "Kazakh", "km": "Khmer", "ko": "Korean", "lt": "Lithuanian",
    "lv": "Latvian", "mk": "Macedonian", "ml": "Malayalam", "mn": "Mongolian", "mr": "Marathi",
    "my": "Burmese", "ne": "Nepali", "nl": "Dutch", "pl": "Polish", "ps": "Pashto",
    "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "si": "Sinhala", "sl": "Slovenian",
    "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "te": "Telugu", "th": "Thai",
    "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu", "vi": "Vietnamese",
    "xh": "Xhosa", "zh": "Chinese",
}


def _base(code: str) -> str:
    return code.split("_")[0].split("-")[0]


def known_name(code: str, extra: Mapping[str, str] | None = None) -> str | None:
    """English name of ``code`` from ``extra`` (a config's ``data.language_names``: the
    code itself, then its base ``xx`` of ``xx_YY``), else from the built-in table; None if
    neither has it."""
    extra = extra or {}
    for candidate in (code, _base(code)):
        if candidate in extra:
            return extra[candidate]
    return LANGUAGE_NAMES.get(_base(code))


def language_name(code: str, extra: Mapping[str, str] | None = None) -> str:
    """English name of ``code``; an unknown code is an error that lists the known ones and
    says how to add a name (``data.language_names``)."""
    name = known_name(code, extra)
    if name is None:
        hint = did_you_mean(_base(code), LANGUAGE_NAMES)
        raise ValueError(f"Unknown language code {code!r}.{hint} Name it in the config, e.g. data.language_names: "
                         f"{{{code}: <English name>}}. Known: {', '.join(sorted(set(LANGUAGE_NAMES) | set(extra or {})))}")
    return name
