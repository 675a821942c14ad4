"""The repository stands alone: it cites only its own documents, and the sections it cites exist."""
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUTSIDE_REFERENCES = ("/work/" + "shared", "../" + "shared", "shared" + "/docs", "shared" + "/data",
                      "project" + " notes")
"""Places outside the repository that earlier code cited (spelled in pieces so this file does not match)."""


def tracked_text_files():
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    suffixes = {".py", ".md", ".rst", ".txt", ".cfg", ".toml", ".ini", ".conf", ".sh", ".yaml"}
    for name in listed.splitlines():
        path = ROOT / name
        if path.is_file() and (path.suffix in suffixes or path.name == "Makefile"):
            yield path


def test_nothing_cites_documents_outside_the_repository():
    offenders = [f"{path.relative_to(ROOT)}: {needle}" for path in tracked_text_files()
                 for needle in OUTSIDE_REFERENCES if needle in path.read_text(errors="replace")]
    assert not offenders


def test_cited_sections_of_the_conventions_exist():
    headings = {line[3:].strip() for line in (ROOT / "docs" / "conventions.md").read_text().splitlines()
                if line.startswith("## ")}
    cited = {}
    for path in tracked_text_files():
        text = " ".join(path.read_text(errors="replace").split())
        for match in re.finditer(r'docs/conventions\.md,? \(?"([^"]+)"(?: and "([^"]+)")?', text):
            for section in filter(None, match.groups()):
                cited.setdefault(section, path.relative_to(ROOT))
    assert cited, "no citation of docs/conventions.md found"
    missing = {section: str(path) for section, path in cited.items() if section not in headings}
    assert not missing
