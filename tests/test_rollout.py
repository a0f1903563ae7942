"""make deploy's rollout (deploy/rollout.py) on the stack deployed into moto server.

moto has groups, launch templates and stack updates, but no instance refresh: ``Refreshing``
stands in for those two calls only, and does on success what AWS does (the group takes the
desired configuration) and on an alarm what auto rollback does (the group keeps its own).
moto's CloudFormation also keeps a launch template's version when an update changes its user
data, fails on ``UsePreviousValue`` and describes list parameters as Python lists: ``update``
passes every value as given and adds the version CloudFormation would.
"""

from __future__ import annotations

import ast
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from app.extensions import get_settings
from app.storage import aws_client
from deploy import rollout
from deploy.stack import for_moto
from tests.test_cloudformation import stack, template  # noqa: F401  (stack is a fixture)


class Refreshing:
    """moto's autoscaling client with instance refreshes that end as ``ending`` says, per group."""

    def __init__(self, client: Any, ending: dict[str, str]) -> None:
        self.client, self.ending = client, ending
        self.started: list[dict[str, Any]] = []
        self.polls: Iterator[int] = itertools.count()
        self.asked: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def start_instance_refresh(self, **request: Any) -> dict[str, str]:
        self.started.append(request)
        return {"InstanceRefreshId": f"refresh-{len(self.started)}"}

    def describe_instance_refreshes(self, AutoScalingGroupName: str, InstanceRefreshIds: list[str]) -> dict:
        asked = self.asked[AutoScalingGroupName] = self.asked.get(AutoScalingGroupName, 0) + 1
        if asked == 1:
            return {"InstanceRefreshes": [{"Status": "InProgress", "PercentageComplete": 50}]}
        status = self.ending.get(AutoScalingGroupName, "Successful")
        if status == "Successful":
            request = next(r for r in self.started if r["AutoScalingGroupName"] == AutoScalingGroupName)
            self.client.update_auto_scaling_group(
                AutoScalingGroupName=AutoScalingGroupName, **request["DesiredConfiguration"]
            )
        reason = "" if status == "Successful" else "alarm web-5xx is in ALARM; rolled back"
        return {"InstanceRefreshes": [{"Status": status, "PercentageComplete": 100, "StatusReason": reason}]}


def update(app: Flask, stack: dict[str, str], parameters: dict[str, str]) -> dict[str, str]:  # noqa: F811
    """Update the stack in moto with these parameters (the others as they were); return its outputs."""
    cloudformation = aws_client("cloudformation", get_settings(app))
    previous = cloudformation.describe_stacks(StackName=stack["StackName"])["Stacks"][0]["Parameters"]
    # (an empty value given again makes moto update the listener, which it fails to: left to its default)
    values = {p["ParameterKey"]: p["ParameterValue"] for p in previous if p["ParameterValue"]} | parameters
    for key, value in values.items():  # moto describes a list parameter as Python's repr of the list
        if value.startswith("["):
            values[key] = ",".join(ast.literal_eval(value))
    cloudformation.update_stack(
        StackName=stack["StackName"],
        TemplateBody=json.dumps(for_moto(template())),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    described = cloudformation.describe_stacks(StackName=stack["StackName"])["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}
    ec2 = aws_client("ec2", get_settings(app))
    for role in rollout.ROLES:  # what CloudFormation does to a launch template whose user data changed
        made = ec2.create_launch_template_version(
            LaunchTemplateId=outputs[f"{role}LaunchTemplateId"], SourceVersion="1", LaunchTemplateData={}
        )
        outputs[f"{role}LaunchTemplateVersion"] = str(made["LaunchTemplateVersion"]["VersionNumber"])
    return outputs


@pytest.fixture
def released(app: Flask, stack: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:  # noqa: F811
    """A new release put on the stack as make deploy does: groups pinned; (pinned versions, outputs)."""
    autoscaling = aws_client("autoscaling", get_settings(app))
    pinned = rollout.pinned_versions(autoscaling, stack)
    outputs = update(app, stack, {**pinned, "ReleaseKey": "releases/videoproc-0.2.0-test.tar.gz"})
    return pinned, outputs


def versions(app: Flask, outputs: dict[str, str]) -> dict[str, str]:
    return rollout.pinned_versions(aws_client("autoscaling", get_settings(app)), outputs)


def test_a_release_adds_versions_and_the_refreshes_move_the_groups_web_first(
    app: Flask,
    stack: dict[str, str],  # noqa: F811
    released: tuple[dict[str, str], dict[str, str]],
) -> None:
    pinned, outputs = released
    assert pinned == {"WebTemplateVersion": "1", "WorkerTemplateVersion": "1", "OpsTemplateVersion": "1"}
    new = {role: outputs[f"{role}LaunchTemplateVersion"] for role in rollout.ROLES}
    assert all(int(v) > 1 for v in new.values()), "the update added a launch template version per group"
    assert versions(app, outputs) == pinned, "the stack update alone replaces nothing: the groups stay pinned"

    client = Refreshing(aws_client("autoscaling", get_settings(app)), {})
    said: list[str] = []
    done = rollout.Rollout(client, stack["StackName"], outputs, say=said.append, poll=0).run()

    assert [r.role for r in done] == ["Web", "Worker", "Ops"] and {r.status for r in done} == {"Successful"}
    web, worker, _ = client.started
    assert web["AutoScalingGroupName"] == outputs["WebGroupName"]
    assert said.index(f"{outputs['WebGroupName']}: Successful 100%") < said.index(
        next(line for line in said if line.startswith(outputs["WorkerGroupName"]))
    ), "workers start only once the web (and its migrations) is through"
    preferences = web["Preferences"]
    assert (preferences["MinHealthyPercentage"], preferences["MaxHealthyPercentage"]) == (100, 200)
    assert preferences["ScaleInProtectedInstances"] == "Wait" and preferences["AutoRollback"] is True
    assert preferences["CheckpointPercentages"] == [50, 100] and preferences["SkipMatching"] is True
    name = stack["StackName"]
    assert preferences["AlarmSpecification"]["Alarms"] == [
        f"{name}-web-5xx",
        f"{name}-web-unhealthy-hosts",
        f"{name}-not-ready",
    ]
    assert worker["Preferences"]["AlarmSpecification"]["Alarms"] == [f"{name}-worker-errors", f"{name}-not-ready"]
    assert web["DesiredConfiguration"] == {
        "LaunchTemplate": {"LaunchTemplateId": outputs["WebLaunchTemplateId"], "Version": new["Web"]}
    }, "a numbered version: what rollback needs"
    mixed = worker["DesiredConfiguration"]["MixedInstancesPolicy"]
    assert mixed["LaunchTemplate"]["LaunchTemplateSpecification"]["Version"] == new["Worker"]
    assert len(mixed["LaunchTemplate"]["Overrides"]) == 3, "the rest of the workers' policy kept"
    assert versions(app, outputs) == {f"{role}TemplateVersion": v for role, v in new.items()}
    assert rollout.Rollout(client, name, outputs, say=said.append, poll=0).run()[0].status == "Skipped"
    assert len(client.started) == 3, "a group already on the version is not refreshed again"


def test_a_web_rollback_stops_the_rollout_before_the_workers(
    app: Flask,
    stack: dict[str, str],  # noqa: F811
    released: tuple[dict[str, str], dict[str, str]],
) -> None:
    pinned, outputs = released
    client = Refreshing(aws_client("autoscaling", get_settings(app)), {outputs["WebGroupName"]: "RollbackSuccessful"})
    with pytest.raises(SystemExit, match="RollbackSuccessful alarm web-5xx is in ALARM"):
        rollout.Rollout(client, stack["StackName"], outputs, say=lambda _: None, poll=0).run()
    assert [r["AutoScalingGroupName"] for r in client.started] == [outputs["WebGroupName"]]
    assert versions(app, outputs) == pinned, "every group still runs the version it ran"
