"""The build stages of a world. Each is ``stage(world_dir, cfg) -> summary dict``: it writes
its files under ``world_dir`` and returns what the manifest records under ``parts[name]``.

Every stage draws from its own ``random.Random`` seeded by (seed, stage), so the stages do
not shift each other's draws.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Optional, TypeVar

from xalign.config.world import RELATIONS, WorldConfig
from xalign.synthetic.lexicon import value_concept
from xalign.synthetic.generate import (
    ANCHOR,
    PIVOT_ONLY,
    SHARED,
    Causal,
    Event,
    Fact,
    FactStatement,
    Interaction,
    Meaning,
    Speaker,
    World,
    make_world,
)

T = TypeVar("T")
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")
INSTRUCTION_KINDS = ("answer_the_question", "say_why", "say_what_follows", "say_it_another_way")


def stage_rng(cfg: WorldConfig, stage: str) -> random.Random:
    return random.Random(f"{cfg.seed}:{stage}")


def write_text(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=2) + "\n",
                    encoding="utf-8")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_text(path, (json.dumps(r, ensure_ascii=False, sort_keys=True) for r in rows))


def sample_distinct(draw: Callable[[], T], n: int, exclude: Iterable[T] = ()) -> list[T]:
    """Up to ``n`` distinct draws not in ``exclude``; fewer if the space runs dry (it gives
    up after 20 * n + 1000 draws), so callers record the real count."""
    seen, out = set(exclude), []
    for _ in range(20 * n + 1000):
        if len(out) == n:
            break
        item = draw()
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def balanced_labels(n: int, classes: int, rng: random.Random) -> list[int]:
    labels = [i % classes for i in range(n)]
    rng.shuffle(labels)
    return labels


def stderr_at_half(n: int) -> Optional[float]:
    """Binomial standard error of an accuracy near 0.5 measured on ``n`` items."""
    return round(math.sqrt(0.25 / n), 4) if n else None


def draw_interaction(world: World, rng: random.Random) -> Interaction:
    agent, patient = rng.sample(range(len(world.names)), 2)
    return Interaction(agent, rng.randrange(world.cfg.events.interaction_verbs), patient,
                       rng.random() < 0.5)


def draw_causal(world: World, rng: random.Random) -> Causal:
    return Causal(rng.randrange(len(world.names)), rng.randrange(len(world.rules)),
                  rng.choice(("because", "so")))


def draw_event(world: World, rng: random.Random) -> Event:
    return Event(rng.randrange(len(world.names)), rng.randrange(len(world.rules)),
                 rng.randrange(2))


# ---------------------------------------------------------------- lexicon and facts
def write_lexicon(world_dir: Path, cfg: WorldConfig) -> dict:
    """lexicon.json ({concept: {lang: word}}, people included) and facts.json."""
    world = make_world(cfg)
    codes = [lang.code for lang in world.languages]
    lexicon = {concept: dict(zip(codes, forms)) for concept, forms in world.words.items()}
    lexicon.update({f"person_{p:04d}": dict.fromkeys(codes, name)
                    for p, name in enumerate(world.names)})
    write_json(world_dir / "lexicon.json", lexicon)
    write_json(world_dir / "facts.json", [
        {"person": world.names[f.person], "relation": RELATIONS[f.relation][0],
         "value": value_concept(f.relation, f.value), "status": f.status,
         "languages": [codes[i] for i in f.languages]} for f in world.facts])
    counts = Counter(f.status for f in world.facts)
    return {"concepts": len(world.words), "people": len(world.names),
            "facts": {"all": len(world.facts), ANCHOR: counts[ANCHOR], SHARED: counts[SHARED],
                      PIVOT_ONLY: counts[PIVOT_ONLY]}}


# ---------------------------------------------------------------- corpus
def sentence_makers(world: World, speaker: Speaker) -> dict[str, Callable[[random.Random], list]]:
    """Sentence type -> a function drawing one sentence of that type in speaker's language."""
    facts = world.facts_in(speaker.lang.index)

    def paraphrase(rng: random.Random) -> list[str]:
        first = draw_interaction(world, rng)
        same = rng.random() < 0.5
        second = first.other_voice() if same else first.other_voice().roles_swapped()
        return speaker.paraphrase(first, second, same)

    makers = {
        "causal": lambda rng: speaker.causal(draw_causal(world, rng)),
        "paraphrase": paraphrase,
        "interaction": lambda rng: speaker.interaction(draw_interaction(world, rng)) + ["."],
    }
    if facts:  # a language may state no fact at all (no anchors, nothing shared with it)
        makers["facts"] = lambda rng: speaker.fact(rng.choice(facts))
        makers["fact_questions"] = lambda rng: speaker.fact_qa(rng.choice(facts))
    return makers


def corpus_documents(world: World, speaker: Speaker, target_tokens: int,
                     rng: random.Random) -> tuple[list[str], int]:
    """Documents (one line each) until ``target_tokens`` is reached; returns them and the
    realised token count."""
    makers = sentence_makers(world, speaker)
    weights = world.cfg.corpus.mix.model_dump()
    kinds = [k for k in sorted(makers) if weights[k] > 0] or sorted(makers)
    kind_weights = [weights[k] for k in kinds] if any(weights[k] for k in kinds) else None
    low, high = world.cfg.corpus.sentences_per_doc_min, world.cfg.corpus.sentences_per_doc_max
    docs, tokens = [], 0
    while tokens < target_tokens:
        doc: list[str] = []
        for kind in rng.choices(kinds, kind_weights, k=rng.randint(low, high)):
            doc += makers[kind](rng)
        docs.append(" ".join(doc))
        tokens += len(doc)
    return docs, tokens


def write_corpus(world_dir: Path, cfg: WorldConfig) -> dict:
    """corpus/<lang>.txt with the configured language imbalance."""
    world = make_world(cfg)
    rng = stage_rng(cfg, "corpus")
    tokens, documents = {}, {}
    for lang, share in zip(world.languages, cfg.language_shares()):
        target = round(cfg.corpus.tokens * share)
        docs, count = corpus_documents(world, Speaker(world, lang), target, rng)
        write_text(world_dir / "corpus" / f"{lang.code}.txt", docs)
        tokens[lang.code], documents[lang.code] = count, len(docs)
    total = sum(tokens.values())
    return {"tokens": tokens, "documents": documents, "total_tokens": total,
            "shares": {code: round(n / total, 6) for code, n in tokens.items()},
            "configured_shares": {lang.code: round(s, 6) for lang, s in
                                  zip(world.languages, cfg.language_shares())}}


# ---------------------------------------------------------------- translation pairs
def draw_shareable(world: World, anchors: list[Fact], rng: random.Random) -> Meaning:
    """A meaning every language may state: an anchor fact, an event, a rule or an interaction."""
    kinds = ["event", "causal", "interaction"] + (["fact"] if anchors else [])
    kind = rng.choice(kinds)
    if kind == "fact":
        return FactStatement(rng.choice(anchors))
    if kind == "event":
        return draw_event(world, rng)
    if kind == "causal":
        return draw_causal(world, rng)
    return draw_interaction(world, rng)


def pair_rows(meanings: list[Meaning], src: Speaker, tgt: Speaker) -> list[dict]:
    return [{"src": " ".join(src.sentence(m)), "tgt": " ".join(tgt.sentence(m)),
             "src_lang": src.lang.code, "tgt_lang": tgt.lang.code} for m in meanings]


def write_pairs(world_dir: Path, cfg: WorldConfig) -> dict:
    """pairs/train/<pivot>-<lang>.jsonl and pairs/heldout/ (parallel across languages,
    disjoint from train). Never a pivot-only fact."""
    world = make_world(cfg)
    rng = stage_rng(cfg, "pairs")
    anchors = world.facts_with(ANCHOR)

    def draw() -> Meaning:
        return draw_shareable(world, anchors, rng)

    heldout = sample_distinct(draw, cfg.pairs.heldout_per_language)
    pivot = Speaker(world, world.pivot)
    counts = {"train": {}, "heldout": {}}
    for lang in world.languages[1:]:
        train = sample_distinct(draw, cfg.pairs.train_per_language, exclude=heldout)
        speaker, name = Speaker(world, lang), f"{world.pivot.code}-{lang.code}.jsonl"
        write_jsonl(world_dir / "pairs" / "train" / name, pair_rows(train, pivot, speaker))
        write_jsonl(world_dir / "pairs" / "heldout" / name,
                    pair_rows(heldout, pivot, speaker))
        counts["train"][lang.code], counts["heldout"][lang.code] = len(train), len(heldout)
    return counts


# ---------------------------------------------------------------- instructions
def draw_instruction(world: World, anchors: list[Fact], rng: random.Random) -> tuple:
    kinds = INSTRUCTION_KINDS if anchors else INSTRUCTION_KINDS[1:]
    kind = rng.choice(kinds)
    if kind == "answer_the_question":
        return kind, rng.choice(anchors)
    if kind == "say_it_another_way":
        act = draw_interaction(world, rng)
        return kind, Interaction(act.agent, act.verb, act.patient, passive=False)
    return kind, (rng.randrange(len(world.names)), rng.randrange(len(world.rules)))


def instruction_row(speaker: Speaker, item_id: str, kind: str, payload) -> dict:
    """One Bactrian-X style item: answer a fact question, say the cause, say the effect, or
    say an active sentence in the passive."""
    if kind == "answer_the_question":
        given, wanted = speaker.fact_question(payload), speaker.fact_answer(payload)
    elif kind == "say_it_another_way":
        given = speaker.interaction(payload) + ["."]
        wanted = speaker.interaction(payload.other_voice()) + ["."]
    else:
        person, rule = payload
        cause, effect = Event(person, rule, 0), Event(person, rule, 1)
        if kind == "say_why":
            cause, effect = effect, cause
        given, wanted = speaker.sentence(cause), speaker.sentence(effect)
    return {"id": item_id, "instruction": f"{speaker.word[kind]} .", "input": " ".join(given),
            "output": " ".join(wanted)}


def write_instructions(world_dir: Path, cfg: WorldConfig) -> dict:
    """instructions/<lang>.jsonl, parallel by id across languages."""
    world = make_world(cfg)
    rng = stage_rng(cfg, "instructions")
    anchors = world.facts_with(ANCHOR)
    items = sample_distinct(lambda: draw_instruction(world, anchors, rng), cfg.instructions.items)
    for lang in world.languages:
        speaker = Speaker(world, lang)
        write_jsonl(world_dir / "instructions" / f"{lang.code}.jsonl",
                    [instruction_row(speaker, f"syn-{i:05d}", kind, payload)
                     for i, (kind, payload) in enumerate(items)])
    return {"items": len(items), "kinds": dict(sorted(Counter(k for k, _ in items).items()))}


# ---------------------------------------------------------------- evaluation tasks
def split_sizes(available: int, cfg: WorldConfig) -> tuple[int, int]:
    """(dev, test) sizes; scaled down in proportion when fewer items exist."""
    dev, test = cfg.tasks.dev_items, cfg.tasks.test_items
    if dev + test <= available:
        return dev, test
    dev = round(available * dev / (dev + test))
    return dev, available - dev


def split_labels(n: int, classes: int, cfg: WorldConfig, rng: random.Random) -> list[int]:
    """Labels for ``n`` items, balanced within the dev and within the test split."""
    dev, test = split_sizes(n, cfg)
    return balanced_labels(dev, classes, rng) + balanced_labels(test, classes, rng)


def pawsx_items(world: World, n: int,
                rng: random.Random) -> list[tuple[Interaction, Interaction, int]]:
    """(sentence1, sentence2, label): label 1 = the other voice of the same event, 0 = the
    other voice with the roles swapped (the same bag of words, like PAWS)."""
    events = sample_distinct(lambda: draw_interaction(world, rng), n)
    labels = split_labels(len(events), 2, world.cfg, rng)
    return [(e, e.other_voice() if y else e.other_voice().roles_swapped(), y)
            for e, y in zip(events, labels)]


def xcopa_items(world: World, n: int, rng: random.Random) -> list[tuple]:
    """(person, rule, question, wrong rule, label): the wrong choice is the same side of
    another rule, done by the same person."""
    def draw() -> tuple[int, int, str]:
        return (rng.randrange(len(world.names)), rng.randrange(len(world.rules)),
                rng.choice(("cause", "effect")))

    keys = sample_distinct(draw, n)
    labels = split_labels(len(keys), 2, world.cfg, rng)
    items = []
    for (person, rule, question), label in zip(keys, labels):
        wrong = rng.choice([r for r in range(len(world.rules)) if r != rule])
        items.append((person, rule, question, wrong, label))
    return items


def fact_items(world: World, n: int, rng: random.Random) -> list[tuple[Fact, list[int], int]]:
    """(pivot-only fact, value options, label): the true value and other values of the
    same relation, the true one at a balanced position."""
    facts = world.facts_with(PIVOT_ONLY)
    facts = rng.sample(facts, min(n, len(facts)))
    k = world.cfg.tasks.fact_choices
    labels = split_labels(len(facts), k, world.cfg, rng)
    items = []
    for fact, label in zip(facts, labels):
        others = [v for v in range(world.cfg.facts.values_per_relation) if v != fact.value]
        options = rng.sample(others, k - 1)
        options.insert(label, fact.value)
        items.append((fact, options, label))
    return items


def pawsx_lines(speaker: Speaker, items: list) -> list[str]:
    lines = ["id\tsentence1\tsentence2\tlabel"]
    for i, (first, second, label) in enumerate(items):
        s1 = " ".join(speaker.interaction(first) + ["."])
        s2 = " ".join(speaker.interaction(second) + ["."])
        lines.append(f"{i}\t{s1}\t{s2}\t{label}")
    return lines


def xcopa_rows(speaker: Speaker, items: list) -> list[dict]:
    rows = []
    for i, (person, rule, question, wrong, label) in enumerate(items):
        premise_side = 0 if question == "effect" else 1
        choices = [Event(person, rule, 1 - premise_side), Event(person, wrong, 1 - premise_side)]
        if label == 1:
            choices.reverse()
        rows.append({"idx": i, "question": question, "label": label,
                     "premise": " ".join(speaker.sentence(Event(person, rule, premise_side))),
                     "choice1": " ".join(speaker.sentence(choices[0])),
                     "choice2": " ".join(speaker.sentence(choices[1]))})
    return rows


def fact_rows(speaker: Speaker, items: list) -> list[dict]:
    return [{"idx": i, "question": " ".join(speaker.fact_question(fact)),
             "choices": [speaker.word[value_concept(fact.relation, v)] for v in options],
             "label": label, "person": speaker.world.names[fact.person],
             "relation": RELATIONS[fact.relation][0]}
            for i, (fact, options, label) in enumerate(items)]


def write_tasks(world_dir: Path, cfg: WorldConfig) -> dict:
    """tasks/{pawsx,xcopa,facts}/<lang>/{dev,test}: the same items in every language."""
    world = make_world(cfg)
    rng = stage_rng(cfg, "tasks")
    wanted = cfg.tasks.dev_items + cfg.tasks.test_items
    tasks = {"pawsx": (pawsx_items(world, wanted, rng), pawsx_lines, "tsv"),
             "xcopa": (xcopa_items(world, wanted, rng), xcopa_rows, "jsonl"),
             "facts": (fact_items(world, wanted, rng), fact_rows, "jsonl")}
    summary = {}
    for task, (items, render, ext) in tasks.items():
        dev, _ = split_sizes(len(items), cfg)
        splits = {"dev": items[:dev], "test": items[dev:]}
        for lang in world.languages:
            speaker = Speaker(world, lang)
            for split, split_items in splits.items():
                path = world_dir / "tasks" / task / lang.code / f"{split}.{ext}"
                write = write_text if ext == "tsv" else write_jsonl
                write(path, render(speaker, split_items))
        summary[task] = {split: {"items": len(s), "stderr_at_p50": stderr_at_half(len(s))}
                         for split, s in splits.items()}
    return summary


# ---------------------------------------------------------------- tokenizer
#: The fields of each JSON Lines file that hold world text (the rest are ids and labels).
TEXT_FIELDS = {"pairs": ("src", "tgt"), "instructions": ("instruction", "input", "output"),
               "xcopa": ("premise", "choice1", "choice2"), "facts": ("question", "choices")}


def jsonl_texts(path: Path, fields: tuple[str, ...]) -> Iterable[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            for field in fields:
                yield from row[field] if isinstance(row[field], list) else [row[field]]


def world_words(world_dir: Path) -> Counter:
    """Whitespace tokens of every text the world holds: corpus, pairs, instructions, tasks
    and every lexicon word (so no word of any language is missing)."""
    counts: Counter = Counter()
    for path in sorted((world_dir / "corpus").glob("*.txt")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                counts.update(line.split())
    for pattern, fields in (("pairs/*/*.jsonl", TEXT_FIELDS["pairs"]),
                            ("instructions/*.jsonl", TEXT_FIELDS["instructions"]),
                            ("tasks/xcopa/*/*.jsonl", TEXT_FIELDS["xcopa"]),
                            ("tasks/facts/*/*.jsonl", TEXT_FIELDS["facts"])):
        for path in sorted(world_dir.glob(pattern)):
            for text in jsonl_texts(path, fields):
                counts.update(text.split())
    for path in sorted(world_dir.glob("tasks/pawsx/*/*.tsv")):
        for line in path.read_text(encoding="utf-8").splitlines()[1:]:
            _, s1, s2, _ = line.split("\t")
            counts.update(s1.split() + s2.split())
    lexicon = json.loads((world_dir / "lexicon.json").read_text(encoding="utf-8"))
    for forms in lexicon.values():
        counts.update({word: 0 for word in forms.values() if word not in counts})
    return counts


def make_vocab(counts: Counter) -> dict[str, int]:
    """Specials first, then words by (-count, word): the same counts give the same ids."""
    words = [w for w, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))]
    return {token: i for i, token in enumerate([*SPECIAL_TOKENS, *words])}


def write_tokenizer(world_dir: Path, cfg: WorldConfig) -> dict:
    """tokenizer/: a WordLevel tokenizer over every word of the world, in HF format."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = make_vocab(world_words(world_dir))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>",
                                      unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    wrapped.save_pretrained(str(world_dir / "tokenizer"))
    portable_tokenizer_class(world_dir / "tokenizer" / "tokenizer_config.json")
    check_tokenizer(world_dir)
    return {"vocab_size": len(vocab), "special_tokens": list(SPECIAL_TOKENS)}


def portable_tokenizer_class(config_path: Path) -> None:
    """transformers 5 saves the class as TokenizersBackend, which 4.x cannot load; both
    load PreTrainedTokenizerFast."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    write_json(config_path, config)


def check_tokenizer(world_dir: Path) -> None:
    """Raise ValueError unless the saved tokenizer loads offline and round-trips text of
    every language with no <unk>."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(world_dir / "tokenizer"))
    for path in sorted((world_dir / "corpus").glob("*.txt")):
        with open(path, encoding="utf-8") as f:
            text = " ".join(line.strip() for _, line in zip(range(20), f))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if tokenizer.unk_token_id in ids or tokenizer.decode(ids) != text:
            raise ValueError(f"the world tokenizer does not round-trip {path.name} without <unk>")
