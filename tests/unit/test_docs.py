"""The project explains itself: code cites docs/API.md (never documents outside the repository),
and docs/API.md keeps up with the routes and SDK endpoints lms serves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lms import protocol
from lms.auth.permissions import ROUTE_ACCESS, SDK_ACCESS

ROOT = Path(__file__).resolve().parents[2]
API_DOC = ROOT / "docs" / "API.md"
SCANNED = ("lms", "tests", "bench")

#: Citations of documents a reader of the repository does not have: the research notes
#: (a "reference" folder and its files, their numbered "pitfalls") and the product spec.
OUTSIDE_CITATIONS = re.compile(
    r"reference(?:/| §)|SPEC[ ]§|lmstudio-(?:api|sdk-protocol)\.md|pitfalls?[ ]+\d"
)
#: "(docs/API.md, Section; Other section)", possibly wrapped over lines.
DOC_CITATION = re.compile(r"docs/API\.md, ([^)]*)\)")
SDK_RULE = re.compile(r"SDK rules? (\d+)")


def _sources() -> list[Path]:
    files = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            # bench/.cache holds the benchmarks' downloads and builds (never committed)
            if path.is_file() and not {"__pycache__", ".cache"} & set(path.parts):
                files.append(path)
    return files


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None  # binary: cites nothing


def _doc() -> str:
    return API_DOC.read_text(encoding="utf-8")


def _headings() -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r"^#{2,3} (.+)$", _doc(), re.MULTILINE)}


def _sdk_rules() -> int:
    section = _doc().split("### SDK rules", 1)[1].split("\n## ", 1)[0]
    return len(re.findall(r"^\d+\. ", section, re.MULTILINE))


def test_nothing_cites_documents_outside_the_repository() -> None:
    found = []
    for path in _sources():
        text = _text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if OUTSIDE_CITATIONS.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "cite docs/API.md (and its section) instead:\n" + "\n".join(found)


def test_citations_of_the_api_doc_name_its_sections() -> None:
    headings = _headings()
    rules = _sdk_rules()
    assert rules >= 10, "the SDK rules section lost its numbered list"
    wrong = []
    cited = 0
    for path in _sources():
        text = _text(path)
        if text is None or path == Path(__file__).resolve():
            continue
        flat = " ".join(text.split())  # a citation may wrap over lines of a docstring
        for match in DOC_CITATION.finditer(flat):
            cited += 1
            for name in (part.strip() for part in match.group(1).split(";")):
                rule = SDK_RULE.fullmatch(name)
                if rule is None and name not in headings:
                    wrong.append(f"{path.relative_to(ROOT)}: no section {name!r}")
        for match in SDK_RULE.finditer(flat):
            if not 1 <= int(match.group(1)) <= rules:
                wrong.append(f"{path.relative_to(ROOT)}: no SDK rule {match.group(1)}")
    assert cited >= 20, "the code stopped citing docs/API.md"
    assert not wrong, "\n".join(wrong)


def _api_paths() -> dict[str, str]:
    """The ``API_*`` constants of lms/protocol.py that are HTTP paths."""
    return {
        name: value
        for name, value in vars(protocol).items()
        if name.startswith("API_") and isinstance(value, str) and value.startswith("/")
    }


def test_the_protocol_has_routes_to_check() -> None:
    paths = _api_paths()
    assert protocol.API_NATIVE_CHAT in paths.values()
    assert len(paths) >= 15


@pytest.mark.parametrize("name", sorted(_api_paths()))
def test_every_route_of_the_protocol_is_documented(name: str) -> None:
    path = _api_paths()[name]
    methods = sorted(method for method, route in ROUTE_ACCESS if route == path)
    assert methods, f"{name} ({path}) is not in the route table of lms/auth/permissions.py"
    doc = _doc()
    for method in methods:
        assert f"`{method} {path}`" in doc, f"docs/API.md does not document `{method} {path}`"


def test_every_route_of_the_permission_table_is_documented() -> None:
    doc = _doc()
    missing = [f"{m} {p}" for m, p in sorted(ROUTE_ACCESS) if f"`{m} {p}`" not in doc]
    assert not missing, f"docs/API.md does not document: {', '.join(missing)}"


def test_every_sdk_endpoint_is_documented() -> None:
    section = _doc().split("### SDK endpoints", 1)[1].split("\n### ", 1)[0]
    missing = sorted(
        f"/{namespace} {endpoint}"
        for namespace, endpoint in SDK_ACCESS
        if f"`{endpoint}`" not in section
    )
    assert not missing, f"the SDK endpoints table of docs/API.md lacks: {', '.join(missing)}"
