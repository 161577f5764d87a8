"""Pages of the List RPCs: walking every page gives every item once, in order, also when
items come and go between pages; a token is refused with other filters or when it is not
one the daemon gave. A real daemon with several models, plugins, tools and collections."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from rustaid.api.v1 import (
    common_pb2,
    models_pb2,
    plugins_pb2,
    rag_pb2,
    tools_pb2,
    tools_pb2_grpc,
    updates_pb2,
    updates_pb2_grpc,
)
from rustaid.services.paging import MAX_PAGE_SIZE, paginate
from rustaid.testing.daemon import run_daemon
from tests.conftest import add_model
from tests.rag.conftest import RagStubs, link_embedding_model
from tests.rag.models import write_model
from tests.services.test_generate import error_of, field_violations

CODE = grpc.StatusCode
MODELS = [f"m{i}" for i in range(7)]


@pytest.fixture(scope="module")
def stubs(
    tmp_path_factory: pytest.TempPathFactory,
    model_files: dict[str, Path],
) -> Iterator[RagStubs]:
    data_dir = tmp_path_factory.mktemp("paging")
    embedder = write_model(tmp_path_factory.mktemp("onnx") / "tiny", dim=16, seed=1)
    for name in MODELS:
        add_model(data_dir, model_files["tiny"], f"{name}.gguf")
    link_embedding_model(data_dir, embedder, "tiny")
    (data_dir / "config").mkdir(exist_ok=True)
    (data_dir / "config" / "rustaid.toml").write_text(
        '[rag]\nembedding_model = "embeddings/tiny"\n'
    )
    with run_daemon(data_dir) as d:
        s = RagStubs(d)
        for name in ("c", "a", "e", "b", "d"):
            s.rag.CreateCollection(rag_pb2.CreateCollectionRequest(name=name))
        yield s


def walk(call: Callable[[str], Any], items: str) -> tuple[list[Any], int]:
    """Every item over every page, and how many pages it took."""
    got: list[Any] = []
    token, pages = "", 0
    while True:
        page = call(token)
        got.extend(getattr(page, items))
        pages += 1
        token = page.next_page_token
        if not token:
            return got, pages
        assert pages < 100, "the pages never end"


def test_models_come_in_pages_of_the_size_asked(stubs: RagStubs) -> None:
    everything = stubs.models.ListModels(models_pb2.ListModelsRequest()).models
    ids = [m.id for m in everything]
    assert ids == sorted(ids) and set(MODELS) <= set(ids)
    paged, pages = walk(
        lambda t: stubs.models.ListModels(models_pb2.ListModelsRequest(page_size=3, page_token=t)),
        "models",
    )
    assert [m.id for m in paged] == ids
    assert pages == -(-len(ids) // 3)


def test_an_item_added_or_removed_between_pages_moves_no_other(
    stubs: RagStubs, model_files: dict[str, Path]
) -> None:
    llm = common_pb2.MODEL_KIND_LLM
    first = stubs.models.ListModels(models_pb2.ListModelsRequest(page_size=3, kind=llm))
    seen = [m.id for m in first.models]
    assert seen == ["m0", "m1", "m2"]
    # Before the next page: an item before the token's place goes, one after it comes.
    stubs.models.DeleteModel(models_pb2.DeleteModelRequest(id="m1"))
    data_dir = stubs.daemon.data_dir
    add_model(data_dir, model_files["tiny"], "m4b.gguf")
    deadline = time.monotonic() + 30
    while "m4b" not in [
        m.id for m in stubs.models.ListModels(models_pb2.ListModelsRequest()).models
    ]:
        assert time.monotonic() < deadline, "the new model file was never listed"
        time.sleep(0.1)
    rest, _ = walk(
        lambda t: stubs.models.ListModels(
            models_pb2.ListModelsRequest(
                page_size=3, page_token=t or first.next_page_token, kind=llm
            )
        ),
        "models",
    )
    assert [m.id for m in rest] == ["m3", "m4", "m4b", "m5", "m6"]


def test_plugins_tools_collections_and_history_come_in_pages(stubs: RagStubs) -> None:
    plugins = stubs.plugins.ListPlugins(plugins_pb2.ListPluginsRequest()).plugins
    assert len(plugins) >= 2
    paged, pages = walk(
        lambda t: stubs.plugins.ListPlugins(
            plugins_pb2.ListPluginsRequest(page_size=1, page_token=t)
        ),
        "plugins",
    )
    assert [p.id for p in paged] == sorted(p.id for p in plugins)
    assert pages == len(plugins)

    tools = tools_pb2_grpc.ToolsServiceStub(stubs.channel)
    whole = tools.ListTools(tools_pb2.ListToolsRequest())
    assert len(whole.tools) >= 2
    first = tools.ListTools(tools_pb2.ListToolsRequest(page_size=1))
    assert list(first.wasm_modules) == list(whole.wasm_modules)
    paged, _ = walk(
        lambda t: tools.ListTools(tools_pb2.ListToolsRequest(page_size=1, page_token=t)),
        "tools",
    )
    assert [t.name for t in paged] == sorted(t.name for t in whole.tools)

    paged, pages = walk(
        lambda t: stubs.rag.ListCollections(
            rag_pb2.ListCollectionsRequest(page_size=2, page_token=t)
        ),
        "collections",
    )
    assert [c.name for c in paged] == ["a", "b", "c", "d", "e"] and pages == 3

    updates = updates_pb2_grpc.UpdatesServiceStub(stubs.channel)
    history = updates.ListHistory(updates_pb2.ListHistoryRequest(page_size=5))
    assert list(history.records) == [] and history.next_page_token == ""


def test_bad_page_requests_say_what_to_fix(stubs: RagStubs) -> None:
    err = error_of(lambda: stubs.models.ListModels(models_pb2.ListModelsRequest(page_size=-1)))
    assert err.code() == CODE.INVALID_ARGUMENT
    assert field_violations(err) == ["page_size"]
    assert "page_size is -1" in err.details()

    err = error_of(
        lambda: stubs.rag.ListCollections(rag_pb2.ListCollectionsRequest(page_token="nonsense"))
    )
    assert err.code() == CODE.INVALID_ARGUMENT
    assert field_violations(err) == ["page_token"]
    assert "page_token is not one this daemon gave" in err.details()

    token = stubs.models.ListModels(models_pb2.ListModelsRequest(page_size=1)).next_page_token
    err = error_of(
        lambda: stubs.models.ListModels(
            models_pb2.ListModelsRequest(page_size=1, page_token=token, loaded_only=True)
        )
    )
    assert err.code() == CODE.INVALID_ARGUMENT
    assert "other filters" in err.details() and "loaded_only=True" in err.details()


def test_the_largest_page_is_capped_and_the_rest_follows() -> None:
    items = [f"{i:05d}" for i in range(MAX_PAGE_SIZE + 5)]
    page = paginate(reversed(items), str, MAX_PAGE_SIZE * 10, "")
    assert page.items == items[:MAX_PAGE_SIZE] and page.next_page_token
    rest = paginate(items, str, MAX_PAGE_SIZE * 10, page.next_page_token)
    assert rest.items == items[MAX_PAGE_SIZE:] and rest.next_page_token == ""
    newest = paginate(items, str, 2, "", newest_first=True)
    assert newest.items == items[-1:-3:-1]
    after = paginate(items, str, 2, newest.next_page_token, newest_first=True)
    assert after.items == items[-3:-5:-1]


def test_the_documented_page_loop_lists_every_model(stubs: RagStubs) -> None:
    guide = (Path(__file__).parents[2] / "docs" / "grpc-api.md").read_text()
    section = guide[guide.index("**Pages.**") :]
    start = section.index("```python\n") + len("```python\n")
    code = section[start : section.index("\n```", start)]
    printed: list[str] = []
    namespace = {"models_pb2": models_pb2, "stub": stubs.models, "print": printed.append}
    assert "page_size=50" in code
    exec(code.replace("page_size=50", "page_size=2"), namespace)  # several pages here
    everything = stubs.models.ListModels(models_pb2.ListModelsRequest()).models
    assert printed == [m.id for m in everything]
