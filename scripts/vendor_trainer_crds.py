"""Copy the Kubeflow Trainer CRD schemas the project supports into tests/crds/ (one JSON per version).

    python scripts/vendor_trainer_crds.py ../shared/vendor/kubeflow-trainer

Each file keeps the CRDs' Apache-2.0 licence header and holds the openAPIV3Schema of TrainJob and
TrainingRuntime (v1alpha1) with the ``description`` texts removed (they are most of the size; the
schemas are otherwise unchanged).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

VERSIONS = ("2.1.0", "2.2.0", "2.3.0")
KINDS = {"TrainJob": "trainjobs", "TrainingRuntime": "trainingruntimes"}
OUT = Path(__file__).resolve().parents[1] / "tests" / "crds"


def without_descriptions(node):
    if isinstance(node, dict):
        return {k: without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def main(source: str) -> int:
    OUT.mkdir(exist_ok=True)
    for version in VERSIONS:
        document = {"source": f"kubeflow/trainer v{version}, manifests/base/crds (descriptions removed)", "schemas": {}}
        for kind, plural in KINDS.items():
            path = Path(source) / f"{plural}-crd-v{version}.yaml"
            text = path.read_text(encoding="utf-8")
            document["licence"] = [line.removeprefix("#").strip() for line in text.splitlines() if line.startswith("#")]
            crd = yaml.safe_load(text)
            served = {v["name"]: v for v in crd["spec"]["versions"]}
            document["schemas"][kind] = without_descriptions(served["v1alpha1"]["schema"]["openAPIV3Schema"])
        target = OUT / f"trainer-v{version}.json"
        target.write_text(json.dumps(document, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote {target} ({target.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "../shared/vendor/kubeflow-trainer"))
