"""The Lambdas' IAM policy of each stage, made from one source: ``infra/policy.template.json``
with ``@STAGE@`` where the stage's name goes. Chalice reads ``.chalice/policy-<stage>.json``
(``autogen_policy: false``); those files are generated, never edited:

    python -m infra.policies            # writes .chalice/policy-<stage>.json for every stage

``make package`` (infra/package.py) writes the one it packages by itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).with_name("policy.template.json")
MARK = "@STAGE@"


def policy_text(stage: str) -> str:
    return TEMPLATE.read_text().replace(MARK, stage)


def policy(stage: str) -> dict:
    """The stage's Lambda policy, as chalice deploys it."""
    return json.loads(policy_text(stage))


def stages(project: Path = ROOT) -> list[str]:
    """The stages chalice's config names."""
    return sorted(json.loads((project / ".chalice" / "config.json").read_text()).get("stages", {}))


def write(project: Path = ROOT, only: list[str] | None = None) -> list[Path]:
    """Write ``.chalice/policy-<stage>.json`` under ``project`` for ``only`` (default: every stage)."""
    out = []
    for stage in only or stages(project):
        path = project / ".chalice" / f"policy-{stage}.json"
        path.write_text(policy_text(stage))
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    for path in write(only=(argv if argv is not None else sys.argv[1:]) or None):
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
