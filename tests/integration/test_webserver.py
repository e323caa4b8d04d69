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


@pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="needs Debian's chromium and chromium-driver (make setup installs them as root)",
)
def test_asset_graph_page_shows_the_pipeline_in_headless_chromium(server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    from gtp_pipeline.definitions import defs

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
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
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
