"""Subject names of emojis, for instructions: '1F409' -> 'dragon', '1F1FA-1F1F8' -> 'US flag'.

`unicodedata.name`, lowercased and simplified (color words removed, so a "red apple" can be
recolored without a contradictory instruction; "latin capital letter" -> "letter"). Code points
newer than this Python's Unicode database come from `NEW_NAMES`. Sequences: flags "US flag"
(regional indicators) / "England flag" (subdivision tags), keycaps "keycap one", ZWJ sequences
from their components with small tables for roles ("man farmer"), gender signs ("woman police
officer"), pairs of people ("women holding hands"), families and couples, and `SEQUENCE_NAMES`
for the rest; skin-tone modifiers are dropped (the colors say it). OpenMoji's own icons
(private-use code points, E000-F8FF) carry no name in the package (the SVGs have no metadata),
so they are called "icon".
"""

from __future__ import annotations

import unicodedata

from dataset_creation.openmoji.source import code_points

# Emoji newer than the Unicode database of Python 3.11 (Unicode 14), as in Unicode 15-17.
NEW_NAMES: dict[int, str] = {
    0x1F6DC: "wireless",
    0x1FA75: "light blue heart",
    0x1FA76: "grey heart",
    0x1FA77: "pink heart",
    0x1FA87: "maracas",
    0x1FA88: "flute",
    0x1FAAD: "folding hand fan",
    0x1FAAE: "hair pick",
    0x1FAAF: "khanda",
    0x1FABB: "hyacinth",
    0x1FABC: "jellyfish",
    0x1FABD: "wing",
    0x1FABF: "goose",
    0x1FACE: "moose",
    0x1FACF: "donkey",
    0x1FADA: "ginger root",
    0x1FADB: "pea pod",
    0x1FAE8: "shaking face",
    0x1FAF7: "leftwards pushing hand",
    0x1FAF8: "rightwards pushing hand",
    0x1F6D8: "landslide",
    0x1FA89: "harp",
    0x1FA8F: "shovel",
    0x1FABE: "leafless tree",
    0x1FAC6: "fingerprint",
    0x1FADC: "root vegetable",
    0x1FADF: "splatter",
    0x1FAE9: "face with bags under eyes",
    0x1FA8A: "trombone",
    0x1FA8E: "treasure chest",
    0x1FAC8: "hairy creature",
    0x1FACD: "orca",
    0x1FAEA: "distorted face",
    0x1FAEF: "fight cloud",
    # Unicode names that read badly as subjects.
    0x1F9D1: "person",
    0x1F9D2: "child",
}
# ZWJ sequences not derivable from their components (code without FE0F and skin tones).
SEQUENCE_NAMES: dict[str, str] = {
    "1F3F3-200D-1F308": "rainbow flag",
    "1F3F3-200D-26A7": "transgender flag",
    "1F3F4-200D-2620": "pirate flag",
    "1F408-200D-2B1B": "cat",
    "1F426-200D-2B1B": "bird",
    "1F426-200D-1F525": "phoenix",
    "1F43B-200D-2744": "polar bear",
    "1F415-200D-1F9BA": "service dog",
    "1F441-200D-1F5E8": "eye in speech bubble",
    "2764-200D-1F525": "heart on fire",
    "2764-200D-1FA79": "mending heart",
    "1F636-200D-1F32B": "face in clouds",
    "1F62E-200D-1F4A8": "face exhaling",
    "1F635-200D-1F4AB": "face with spiral eyes",
    "1F34B-200D-1F7E9": "lime",
    "1F344-200D-1F7EB": "mushroom",
    "26D3-200D-1F4A5": "broken chain",
    "1F642-200D-2194": "head shaking horizontally",
    "1F642-200D-2195": "head shaking vertically",
    "1F9D1-200D-1F384": "mx claus",
    "1FAF1-200D-1FAF2": "handshake",
}
# Second component of person/man/woman ZWJ sequences.
ROLES: dict[int, str] = {
    0x1F33E: "farmer",
    0x1F373: "cook",
    0x1F37C: "feeding a baby",
    0x1F393: "student",
    0x1F3A4: "singer",
    0x1F3A8: "artist",
    0x1F3EB: "teacher",
    0x1F3ED: "factory worker",
    0x1F4BB: "technologist",
    0x1F4BC: "office worker",
    0x1F527: "mechanic",
    0x1F52C: "scientist",
    0x1F680: "astronaut",
    0x1F692: "firefighter",
    0x2695: "health worker",
    0x2696: "judge",
    0x2708: "pilot",
    0x1F9AF: "with a probing cane",
    0x1F9BC: "in a motorized wheelchair",
    0x1F9BD: "in a manual wheelchair",
    0x1F9B0: "with red hair",
    0x1F9B1: "with curly hair",
    0x1F9B3: "with white hair",
    0x1FA70: "ballet dancer",
}
BALD = 0x1F9B2
PEOPLE = {0x1F9D1: "person", 0x1F468: "man", 0x1F469: "woman"}
PLURAL = {"person": "people", "man": "men", "woman": "women"}
FAMILY = {0x1F9D1, 0x1F468, 0x1F469, 0x1F466, 0x1F467, 0x1F9D2}
CHILDREN = {0x1F466, 0x1F467, 0x1F9D2}
PAIR_ACTIVITIES = {0x1F91D: "holding hands", 0x1FAEF: "wrestling", 0x1F430: "with bunny ears"}
GENDER = {0x2640: "woman", 0x2642: "man"}
SUBDIVISIONS = {"gbeng": "England", "gbsct": "Scotland", "gbwls": "Wales"}
ZWJ, VS16, VS15, KEYCAP, HEART, KISS, RIGHT_ARROW, BLACK_FLAG = (
    0x200D, 0xFE0F, 0xFE0E, 0x20E3, 0x2764, 0x1F48B, 0x27A1, 0x1F3F4
)  # fmt: skip
COLOR_WORDS = {"black", "white", "red", "green", "blue", "yellow", "orange", "purple", "brown", "pink", "grey", "gray"}
SHADE_WORDS = {"light", "dark", "medium"}
NAME_REPLACEMENTS = (
    ("negative squared ", "squared "),
    ("latin capital letter ", "letter "),
    ("latin small letter ", "letter "),
    ("emoji component ", ""),
    ("emoji modifier ", ""),
)


def is_skin_tone(cp: int) -> bool:
    return 0x1F3FB <= cp <= 0x1F3FF


def _is_private_use(cp: int) -> bool:
    return 0xE000 <= cp <= 0xF8FF or 0xF0000 <= cp


def _code_point_name(cp: int) -> str:
    if cp in NEW_NAMES:
        return NEW_NAMES[cp]
    if _is_private_use(cp):
        return "icon"
    return unicodedata.name(chr(cp), "icon").lower()


def _strip_colors(name: str) -> str:
    """Drop color words ("large red circle" -> "large circle"); keep the name if nothing is left."""
    words = name.split()
    kept: list[str] = []
    for i, word in enumerate(words):
        if word in COLOR_WORDS:
            continue
        if word in SHADE_WORDS and i + 1 < len(words) and words[i + 1] in COLOR_WORDS:
            continue
        kept.append(word)
    return " ".join(kept) if kept else name


def _simplify(name: str) -> str:
    name = name.lower()
    for old, new in NAME_REPLACEMENTS:
        name = name.replace(old, new)
    return " ".join(name.split())


def _components_name(cps: list[int]) -> str:
    """Name of a ZWJ sequence (skin tones and variation selectors already removed)."""
    key = "-".join(f"{cp:X}" for cp in cps)
    if key in SEQUENCE_NAMES:
        return SEQUENCE_NAMES[key]
    parts: list[int] = [cp for cp in cps if cp != ZWJ]
    if len(parts) >= 2 and parts[-1] in GENDER:
        gender = GENDER[parts[-1]]
        base = _components_name(_join_zwj(parts[:-1]))
        words = base.split()
        if "person" in words:
            words[words.index("person")] = gender
            return " ".join(words)
        if words and words[0] == "people":
            return " ".join([PLURAL[gender], *words[1:]])
        return f"{gender} {base}"
    if len(parts) >= 2 and parts[-1] == RIGHT_ARROW:
        return _components_name(_join_zwj(parts[:-1])) + " facing right"
    if len(parts) == 2 and parts[0] in PEOPLE and (parts[1] in ROLES or parts[1] == BALD):
        who = PEOPLE[parts[0]]
        return f"bald {who}" if parts[1] == BALD else f"{who} {ROLES[parts[1]]}"
    if len(parts) >= 3 and parts[0] in PEOPLE and parts[-1] in PEOPLE and HEART in parts:
        return "kiss" if KISS in parts else "couple with heart"
    if len(parts) == 3 and parts[0] in PEOPLE and parts[2] in PEOPLE and parts[1] in PAIR_ACTIVITIES:
        a, b = PEOPLE[parts[0]], PEOPLE[parts[2]]
        who = PLURAL[a] if a == b else f"{a} and {b}"
        return f"{who} {PAIR_ACTIVITIES[parts[1]]}"
    if len(parts) >= 2 and all(cp in FAMILY for cp in parts) and any(cp in CHILDREN for cp in parts):
        return "family"
    return " ".join(_code_point_name(cp) for cp in parts)


def _join_zwj(parts: list[int]) -> list[int]:
    out: list[int] = []
    for cp in parts:
        if out:
            out.append(ZWJ)
        out.append(cp)
    return out


def subject_name(code: str) -> str:
    """What the emoji shows, for instructions: '1F409' -> 'dragon', '1F1FA-1F1F8' -> 'US flag'."""
    cps = [cp for cp in code_points(code) if cp not in (VS16, VS15) and not is_skin_tone(cp)]
    if not cps:  # a skin-tone modifier on its own
        return "skin tone swatch"
    if all(0x1F1E6 <= cp <= 0x1F1FF for cp in cps):
        letters = "".join(chr(ord("A") + cp - 0x1F1E6) for cp in cps)
        return f"letter {letters}" if len(letters) == 1 else f"{letters} flag"
    if len(cps) > 2 and cps[0] == BLACK_FLAG and all(0xE0020 <= cp <= 0xE007F for cp in cps[1:]):
        tag = "".join(chr(cp - 0xE0000) for cp in cps[1:-1])
        return f"{SUBDIVISIONS[tag]} flag" if tag in SUBDIVISIONS else f"{tag[:2].upper()}-{tag[2:].upper()} flag"
    if KEYCAP in cps:
        base = " ".join(_code_point_name(cp) for cp in cps if cp != KEYCAP)
        return f"keycap {base.replace('digit ', '')}".strip()
    if len(cps) == 1:
        name = _code_point_name(cps[0])
    else:
        name = _components_name(cps)
    return _strip_colors(_simplify(name))
