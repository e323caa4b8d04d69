"""`dagster dev` on 127.0.0.1: launch a materialization over GraphQL and see it succeed; the UI shows the graph."""

import shutil
import time
from pathlib import Path

import pytest

from tests.integration.servers import DagsterDev

pytestmark = pytest.mark.integration

REPOS = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
RUN_STATUS = "query Run($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }"
LATEST = """query A($path: [String!]!) { assetOrError(assetKey: {path: $path}) {
  ... on Asset { assetMaterializations(limit: 1) { runId metadataEntries { label } } } } }"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    dev = DagsterDev(tmp_path_factory.mktemp("dev"))
    try:
        dev.wait_ready()
        yield dev
    finally:
        dev.stop()


def test_graphql_launch_materializes_target_examples(server):
    repo = server.graphql(REPOS)["repositoriesOrError"]["nodes"][0]
    params = {
        "selector": {
            "repositoryLocationName": repo["location"]["name"],
            "repositoryName": repo["name"],
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": ["target_examples"]}, {"path": ["target_rejects"]}],
            "assetCheckSelection": [],
        },
        "runConfigData": {},
    }
    launched = server.graphql(LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    status, deadline = None, time.time() + 180
    while time.time() < deadline:
        status = server.graphql(RUN_STATUS, {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    assert status == "SUCCESS"
    latest = server.graphql(LATEST, {"path": ["target_examples"]})["assetOrError"]["assetMaterializations"][0]
    assert latest["runId"] == run_id
    assert {"dev_examples", "test_examples"} <= {m["label"] for m in latest["metadataEntries"]}


needs_chromium = pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="needs Debian's chromium and chromium-driver (make setup installs them as root)",
)


def headless_chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chrome'}",
        "--window-size=1600,1800",  # tall enough that the corpus group graph draws all its nodes
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


@needs_chromium
def test_asset_graph_page_shows_the_pipeline_in_headless_chromium(server, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    from gtp_pipeline.definitions import defs

    driver = headless_chromium(tmp_path)
    repo = server.graphql(REPOS)["repositoriesOrError"]["nodes"][0]
    address = f"{repo['name']}@{repo['location']['name']}"
    groups: dict[str, list[str]] = {}
    for spec in defs.resolve_all_asset_specs():
        groups.setdefault(spec.group_name, []).append(spec.key.to_user_string())

    def shows(*names: str):
        return lambda d: all(name in d.page_source for name in names)

    try:
        # The global lineage collapses a graph this size into its groups; each group's page draws its assets.
        driver.get(f"{server.url}/asset-groups")
        WebDriverWait(driver, 90).until(shows(*groups))
        driver.save_screenshot(str(tmp_path / "lineage.png"))
        for group, names in groups.items():
            driver.get(f"{server.url}/locations/{address}/asset-groups/{group}")
            WebDriverWait(driver, 60).until(shows(*names))
        driver.save_screenshot(str(tmp_path / f"group_{group}.png"))
        driver.get(f"{server.url}/assets")  # the catalog lists every asset
        WebDriverWait(driver, 60).until(shows(*(n for names in groups.values() for n in names)))
    finally:
        driver.quit()


def test_dagster_dev_in_the_repo_root_starts_without_the_ignored_dagster_yaml_warning(server):
    server.log.flush()
    log = Path(server.log.name).read_text()  # dagster dev's own output, started in the repo root
    assert "Dagster webserver" in log or "Serving dagster-webserver" in log or "webserver" in log.lower()
    assert "Found a dagster instance configuration value" not in log


RUNS = """query R($tag: String!) { runsOrError(filter: {tags: [{key: "gtp/launched_by", value: $tag}]}) {
  ... on Runs { results { runId status assetSelection { path } tags { key value } } } } }"""


def test_demo_runs_are_launched_runs_the_ui_lists_and_its_daemon_runs_them(server, monkeypatch):
    import dagster as dg

    from gtp_pipeline.definitions import defs
    from gtp_pipeline.demo import with_upstream
    from gtp_pipeline.launcher import daemon_running, launch_demo
    from gtp_pipeline.resources import resources_for_profile

    root = server.env["GTP_ARTIFACT_ROOT"]
    monkeypatch.setenv("GTP_ARTIFACT_ROOT", root)
    tiny = dg.Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, resources=resources_for_profile("tiny", root)
    )
    with dg.DagsterInstance.from_config(str(server.home)) as instance:
        deadline = time.time() + 60
        while not daemon_running(instance):  # dagster dev's daemon takes the queue, the demo only follows
            assert time.time() < deadline, "dagster dev's daemon never beat its heart"
            time.sleep(2)
        report = launch_demo(
            tiny, instance, {"gtp/launched_by": "demo"}, log=lambda _: None, only=with_upstream(tiny, ["raw_corpus"])
        )
    assert [r["status"] for r in report if r["assets"].startswith("corpus_rejects")] == ["materialized"]
    runs = server.graphql(RUNS, {"tag": "demo"})["runsOrError"]["results"]
    listed = {tuple(sorted(a["path"][0] for a in r["assetSelection"])): r for r in runs}
    run = listed[("corpus_rejects", "raw_corpus")]
    assert run["status"] == "SUCCESS"
    assert {"key": "dagster/code_location", "value": "gtp_pipeline"} in run["tags"]


@needs_chromium
def test_the_report_asset_page_shows_its_table_and_loss_plot_without_a_click(tiny_pipeline, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root = tiny_pipeline[0]
    dev = DagsterDev(tmp_path, artifact_root=root)  # the UI on the instance the whole tiny pipeline ran in
    driver = None
    try:
        dev.wait_ready()
        driver = headless_chromium(tmp_path)
        driver.get(f"{dev.url}/assets/selection_report")
        plot = 'img[src^="data:image/svg+xml"]'
        WebDriverWait(driver, 90).until(lambda d: d.find_elements(By.CSS_SELECTOR, plot))
        driver.save_screenshot(str(tmp_path / "selection_report.png"))
        (image,) = driver.find_elements(By.CSS_SELECTOR, plot)  # on the page itself: a dialog draws only when opened
        assert image.is_displayed() and image.size["width"] > 100  # drawn, not a broken-image icon
        cells = {c.text for c in driver.find_elements(By.CSS_SELECTOR, "td, th")}
        assert {"method", "budget", "loss"} <= cells and {"gtp", "topk", "random"} <= cells, sorted(cells)[:40]
    finally:
        if driver is not None:
            driver.quit()
        dev.stop()
