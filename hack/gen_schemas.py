"""Write ``schemas/v1/*.json``: the JSON Schemas of the NATS messages, from their models.

The bus's two message kinds (``startupmonkey/models/messages.py``) are a public contract
(docs/protocol.md#event-bus-messages): any consumer may read them. Their JSON Schemas are
generated from the pydantic models, so they cannot drift from what the analyser and the
executor publish, and checked in under the version they describe.

Usage: ``python hack/gen_schemas.py`` to write, ``python hack/gen_schemas.py --check`` to fail
when the committed files differ from what the models generate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pydantic

from startupmonkey.models import messages

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "schemas" / "v1"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: file name -> (model, the ``schema`` value every message of it carries)
MODELS: dict[str, tuple[type[pydantic.BaseModel], str]] = {
    "detection.json": (messages.Detection, messages.DETECTION_SCHEMA),
    "remediation-event.json": (messages.RemediationEvent, messages.REMEDIATION_EVENT_SCHEMA),
}


def schema_of(model: type[pydantic.BaseModel], version: str, name: str) -> dict[str, Any]:
    """The model's JSON Schema (wire names) with its dialect, its id and ``schema`` required:
    publishers always send it (consumers of this version also accept it missing)."""
    body = model.model_json_schema(by_alias=True, mode="validation")
    body["required"] = ["schema", *[r for r in body.get("required", []) if r != "schema"]]
    return {"$schema": DIALECT, "$id": f"https://{version.split('/')[0]}/schemas/v1/{name}",
            **body}


def render() -> dict[str, str]:
    """File name -> JSON text."""
    return {name: json.dumps(schema_of(model, version, name), indent=2) + "\n"
            for name, (model, version) in MODELS.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    stale = []
    for name, text in render().items():
        path = TARGET / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            TARGET.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("stale JSON Schemas (run python hack/gen_schemas.py):", ", ".join(stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
