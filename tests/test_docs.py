"""README's generated regions match the committed JSON under docs/results/ (`make docs` rewrites them)."""

from __future__ import annotations

from scripts import docs


def test_readme_generated_regions_are_current():
    _, stale = docs.render(docs.README.read_text())
    assert not stale, f"README.md is stale in {stale}: run `make docs` (python -m scripts.docs) and commit"


def test_a_stale_region_is_found():
    text = docs.README.read_text()
    edited = text.replace(
        "<!-- END generated: resume_cost -->", "| edited by hand |\n<!-- END generated: resume_cost -->"
    )
    assert docs.render(edited)[1] == ["resume_cost"]
    assert docs.main(["--check"]) == 0
