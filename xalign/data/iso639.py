"""ISO 639-3 language codes (as bitext files name them: Tatoeba's ``deu-eng.deu``) and the
2-letter ISO 639-1 codes the tasks and runs use (de, zh, sw, ...).

For each 2-letter code the FIRST 3-letter code that maps to it is tried first when a file is
looked up: the individual language that Tatoeba/LASER name files by (cmn for zh, swh for sw,
pes for fa, zsm for ms, lvs for lv); macrolanguage and ISO 639-2/B codes (zho, swa, fas, ger)
are tried after it. A run's ``data.pairs.iso639_3`` entries come before all of these, so a
config can add a language (``{xyz: qaa}``) or prefer another variety (``{yue: zh}``).
"""

from __future__ import annotations

from typing import Mapping, Optional

ISO639_3 = {
    "afr": "af", "amh": "am", "ara": "ar", "aze": "az", "bel": "be", "ben": "bn", "bos": "bs", "bre": "br",
    "bul": "bg", "cat": "ca", "ces": "cs", "cha": "ch", "cmn": "zh", "cor": "kw", "cym": "cy", "dan": "da",
    "deu": "de", "ell": "el", "eng": "en", "epo": "eo", "est": "et", "eus": "eu", "fao": "fo", "fin": "fi",
    "fra": "fr", "fry": "fy", "gla": "gd", "gle": "ga", "glg": "gl", "guj": "gu", "hat": "ht", "heb": "he",
    "hin": "hi", "hrv": "hr", "hun": "hu", "hye": "hy", "ido": "io", "ile": "ie", "ina": "ia", "ind": "id",
    "isl": "is", "ita": "it", "jav": "jv", "jpn": "ja", "kat": "ka", "kaz": "kk", "khm": "km", "kor": "ko",
    "kur": "ku", "lat": "la", "lit": "lt", "lvs": "lv", "mal": "ml", "mar": "mr", "mkd": "mk", "mon": "mn",
    "mya": "my", "nld": "nl", "nno": "nn", "nob": "nb", "npi": "ne", "oci": "oc", "pbt": "ps", "pes": "fa",
    "pol": "pl", "por": "pt", "que": "qu", "ron": "ro", "rus": "ru", "sin": "si", "slk": "sk", "slv": "sl",
    "spa": "es", "sqi": "sq", "srp": "sr", "swe": "sv", "swh": "sw", "tam": "ta", "tat": "tt", "tel": "te",
    "tgl": "tl", "tha": "th", "tuk": "tk", "tur": "tr", "uig": "ug", "ukr": "uk", "urd": "ur", "uzb": "uz",
    "vie": "vi", "xho": "xh", "yid": "yi", "zsm": "ms",
    # macrolanguages and ISO 639-2/B codes: tried after the individual languages above
    "zho": "zh", "chi": "zh", "ger": "de", "fre": "fr", "fas": "fa", "per": "fa", "msa": "ms", "may": "ms",
    "swa": "sw", "lav": "lv", "ekk": "et", "nep": "ne", "pus": "ps", "quz": "qu", "nor": "no", "alb": "sq",
    "arb": "ar", "cze": "cs", "dut": "nl", "gre": "el", "arm": "hy", "geo": "ka", "ice": "is", "mac": "mk",
    "rum": "ro", "slo": "sk", "wel": "cy", "baq": "eu", "bur": "my", "bod": "bo", "tib": "bo",
}


def file_code_candidates(code: str, extra: Optional[Mapping[str, str]] = None) -> list[str]:
    """The ISO 639-3 codes a file of language ``code`` (a run's code) may be named by, in the
    order they are tried: the config's entries, then the built-in table's."""
    extra = extra or {}
    out = [three for three, two in extra.items() if two == code]
    return out + [three for three, two in ISO639_3.items() if two == code and three not in extra]


def iso_to_run_code(three: str, extra: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The run's code of an ISO 639-3 code (the config's entries first); None if unknown."""
    extra = extra or {}
    return extra.get(three, ISO639_3.get(three))
