"""English names of languages, for the released prompt "... Answer in {name}:". Covers the
52 languages of Bactrian-X (ISO 639-1 codes, as that dataset names its files)."""

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


def language_name(code: str) -> str:
    """English name of ``code``; an unknown code is an error that lists the known ones."""
    base = code.split("_")[0].split("-")[0]
    if base not in LANGUAGE_NAMES:
        import difflib

        close = difflib.get_close_matches(base, LANGUAGE_NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown language code {code!r}.{hint} Known: {', '.join(sorted(LANGUAGE_NAMES))}")
    return LANGUAGE_NAMES[base]


def answer_in_english(src: str, tgt: str) -> str:
    """The released prompt ending: fixed English words, the target named in English."""
    return f"Answer in {language_name(tgt)}:"
