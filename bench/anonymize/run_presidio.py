"""Presidio's AnalyzerEngine over the corpus, offline, spans mapped onto our types.

    python run_presidio.py --corpus corpus.jsonl --out presidio.jsonl --spacy-dir /tmp/anon-venv/spacy-blank-en

Presidio needs a spaCy pipeline to tokenize. Model packages come from GitHub,
which is out of reach here, so a blank English pipeline (tokenizer only, no NER,
no lemmas) is saved to disk and passed by path. The pattern recognizers we
compare (EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, IBAN_CODE, IP_ADDRESS, US_SSN,
URL) do not use NER; without lemmas, context words cannot raise scores, which
does not matter here because every result is kept (score_threshold=0).
"""

import argparse
import json
import time
from pathlib import Path

import spacy
import tldextract
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import NlpEngineProvider
from presidio_analyzer.predefined_recognizers import PhoneRecognizer

# Presidio entity -> our label.
ENTITIES = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CARD",
    "IBAN_CODE": "IBAN",
    "IP_ADDRESS": "IP",
    "US_SSN": "SSN",
    "URL": "URL",
}
# Phone regions of the corpus's locales, so Presidio's phonenumbers matcher knows national formats.
REGIONS = ["US", "GB", "DE", "FR", "ES", "IT", "BR", "NL", "PL", "JP", "IN", "SE"]


def offline_tldextract():
    """Presidio's email recognizer checks domains with tldextract, which fetches the public
    suffix list on first use; use the snapshot shipped in the package instead."""
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())


def engine(spacy_dir):
    if not Path(spacy_dir, "config.cfg").exists():
        spacy.blank("en").to_disk(spacy_dir)
    provider = NlpEngineProvider(
        nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": str(spacy_dir)}]}
    )
    nlp_engine = provider.create_engine()
    registry = RecognizerRegistry()
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp_engine)
    registry.remove_recognizer("PhoneRecognizer")
    registry.add_recognizer(PhoneRecognizer(supported_regions=REGIONS))
    return AnalyzerEngine(nlp_engine=nlp_engine, registry=registry, supported_languages=["en"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--spacy-dir", required=True)
    args = parser.parse_args()

    offline_tldextract()
    analyzer = engine(args.spacy_dir)
    rows = [json.loads(line) for line in open(args.corpus)]
    started = time.perf_counter()
    with open(args.out, "w") as out:
        for row in rows:
            results = analyzer.analyze(text=row["text"], language="en", entities=list(ENTITIES), score_threshold=0)
            spans = [
                {"start": r.start, "end": r.end, "type": ENTITIES[r.entity_type], "score": round(r.score, 3)}
                for r in sorted(results, key=lambda r: r.start)
            ]
            out.write(json.dumps({"id": row["id"], "spans": spans}) + "\n")
    elapsed = time.perf_counter() - started
    print(json.dumps({"messages": len(rows), "seconds": round(elapsed, 3), "messages_per_s": round(len(rows) / elapsed, 1)}))


if __name__ == "__main__":
    main()
