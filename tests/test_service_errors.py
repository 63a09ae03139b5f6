"""The one error table (``service.errors.ERRORS``): the README shows it, the exception classes and
the OpenAPI document take their codes and texts from it, and ``GET /search``'s query model refuses
what the body model refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service import errors
from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def test_readme_shows_the_table_as_it_is() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert errors.markdown_table() in readme, "README's error table is stale: paste `python -m service.errors`"


def test_every_error_class_has_its_row_and_rows_are_unique() -> None:
    rows = {(e.status, e.type) for e in errors.ERRORS}
    assert len(rows) == len(errors.ERRORS)
    classes = _subclasses(errors.ServiceError)
    assert len(classes) >= 9
    for cls in classes:
        assert cls.error in errors.ERRORS, cls.__name__
    assert errors.Overloaded("busy", 1.2).status == 429 and errors.Overloaded("busy", 1.2).kind == "overloaded"


def test_openapi_responses_come_from_the_table() -> None:
    responses = errors.openapi_responses(422, 503)
    assert set(responses) == {422, 503}
    assert responses[503]["description"] == f"`not_ready`: {errors.NOT_READY.when}; `index_unavailable`: {errors.INDEX_UNAVAILABLE.when}"
    assert "`invalid_search_mode`" in responses[422]["description"]
    with pytest.raises(ValueError, match="418"):
        errors.openapi_responses(418)


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> TestClient:
    # No index: validation answers before any search reaches the (not ready) model.
    app = create_app(Settings(index=tmp_path_factory.mktemp("none") / "missing", access_log=False))
    with TestClient(app) as c:
        yield c


def test_openapi_document_uses_the_table(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    get_search = paths["/search"]["get"]
    assert get_search["responses"]["429"]["description"] == f"`overloaded`: {errors.OVERLOADED.when}"
    assert paths["/admin/reload"]["post"]["responses"]["409"]["description"].startswith("`reload_refused`: ")
    names = {p["name"] for p in get_search["parameters"]}
    assert names == {"q", "top_k", "return_text", "mode"}
    top_k = next(p for p in get_search["parameters"] if p["name"] == "top_k")["schema"]
    assert (top_k.get("minimum"), top_k.get("maximum")) == (1, 100)


@pytest.mark.parametrize(
    ("query", "field", "fragment"),
    [
        ("q=cancer&topk=5", "topk", "Extra inputs are not permitted"),  # a typo is refused, not ignored
        ("q=%20%0A", "q", "non-whitespace"),
        ("q=cancer&top_k=2.0", "top_k", "decimal digits"),
        ("q=cancer&top_k=0", "top_k", "greater than or equal to 1"),
        ("q=cancer&mode=sparse", "mode", "dense"),
        ("top_k=3", "q", "Field required"),
        ("q=a&q=b", "q", "given 2 times"),
    ],
)
def test_get_search_query_model_refusals(client: TestClient, query: str, field: str, fragment: str) -> None:
    response = client.get(f"/search?{query}")
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["type"] == "validation_error"
    assert any(d["loc"] == ["query", field] and fragment in d["msg"] for d in body["detail"]), body
