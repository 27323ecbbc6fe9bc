"""`dagster dev` on localhost, as a user starts it: its GraphQL API lists the assets, their groups, partitions
and blocking checks, and a run launched through it (as the UI's Materialize button does) succeeds."""

import shutil
import time

from orchestration.assets import ASSET_STAGES
from orchestration.webserver import graphql, webserver
from tests.conftest import REPO, tiny_params

ASSETS = """{ assetNodes { assetKey { path } groupName description isPartitioned dependencyKeys { path }
  partitionKeysByDimension { name partitionKeys }
  assetChecksOrError { ... on AssetChecks { checks { name blocking } } } }
  workspaceOrError { ... on Workspace { locationEntries { name } } } }"""
LAUNCH = """mutation($location: String!, $key: String!, $dataset: String!, $model: String!) {
  launchRun(executionParams: {selector: {repositoryLocationName: $location, repositoryName: "__repository__",
    jobName: "build_bank"}, executionMetadata: {tags: [{key: "dagster/partition", value: $key},
    {key: "dagster/partition/dataset", value: $dataset}, {key: "dagster/partition/model", value: $model}]}}) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""

STATUS = """query($runId: ID!) {
  runOrError(runId: $runId) { ... on Run { status assetMaterializations { assetKey { path } } } } }"""


def test_dagster_dev_serves_the_assets_and_runs_what_the_ui_launches(tmp_path, tiny_model_dir):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / ".dagster" / "dagster.yaml", home / "dagster.yaml")
    params = tiny_params(tmp_path, tiny_model_dir)
    with webserver(home, params) as url:
        data = graphql(url, ASSETS)["data"]
        nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
        assert set(nodes) == set(ASSET_STAGES)
        assert {n["groupName"] for n in nodes.values()} == {"bank", "fine_tuning"}
        assert all(n["description"] and n["isPartitioned"] for n in nodes.values())
        assert [d["path"] for d in nodes["generations"]["dependencyKeys"]] == [["tasks"]]
        assert {d["name"]: d["partitionKeys"] for d in nodes["bank"]["partitionKeysByDimension"]} == {
            "dataset": ["arc_easy", "commonsense_qa"], "model": ["tiny"]}
        checks = {c["name"]: c["blocking"] for c in nodes["report"]["assetChecksOrError"]["checks"]}
        assert checks == {"great_expectations": True}
        gate = {c["name"]: c["blocking"] for c in nodes["promotion"]["assetChecksOrError"]["checks"]}
        assert gate == {"promotion_gate": False}  # a refusal is a result, not a failed run

        location = data["workspaceOrError"]["locationEntries"][0]["name"]
        launched = graphql(url, LAUNCH, location=location, key="arc_easy|tiny", dataset="arc_easy",
                           model="tiny")["data"]["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id, status = launched["run"]["runId"], None
        deadline = time.monotonic() + 300
        while status not in ("SUCCESS", "FAILURE", "CANCELED") and time.monotonic() < deadline:
            time.sleep(2)
            status = graphql(url, STATUS, runId=run_id)["data"]["runOrError"]["status"]
        assert status == "SUCCESS"
        steps = graphql(url, STATUS, runId=run_id)["data"]["runOrError"]["assetMaterializations"]
        assert {"/".join(m["assetKey"]["path"]) for m in steps} == {"tasks", "generations", "attributions", "bank"}
    assert (tmp_path / "data" / "tiny" / "bank" / "arc_easy" / "bank.parquet").exists()
