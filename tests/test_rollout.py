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

from deploy import rollout
from deploy.stack import for_moto
from domain.extensions import get_settings
from domain.storage import aws_client
from tests.test_cloudformation import stack, template  # noqa: F401  (stack is a fixture)


class Refreshing:
    """moto's autoscaling client with instance refreshes that end as ``ending`` says, per group."""

    def __init__(self, client: Any, ending: dict[str, str]) -> None:
        self.client, self.ending = client, ending
        self.started: list[dict[str, Any]] = []
        self.polls: Iterator[int] = itertools.count()
        self.asked: dict[str, int] = {}
        self.replaced: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def replace_instances(self, group: str, desired: dict[str, Any]) -> None:
        """Replace every instance, as a refresh does (moto keeps reporting the old version: recorded here)."""
        self.client.update_auto_scaling_group(AutoScalingGroupName=group, **desired)
        self.replaced.add(group)

    def describe_auto_scaling_groups(self, **request: Any) -> dict[str, Any]:
        found = self.client.describe_auto_scaling_groups(**request)
        for group in found["AutoScalingGroups"]:
            if group["AutoScalingGroupName"] in self.replaced:
                spec = rollout.template_spec(group)
                for instance in group["Instances"]:
                    instance["LaunchTemplate"] = {**instance.get("LaunchTemplate", {}), "Version": spec["Version"]}
        return found

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
            self.replace_instances(AutoScalingGroupName, request["DesiredConfiguration"])
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
    pinned = rollout.pinned_versions(autoscaling, stack, PINNED_BEFORE)
    outputs = update(app, stack, {**pinned, "ReleaseKey": "releases/videoproc-0.2.0-test.tar.gz"})
    return pinned, outputs


PINNED_BEFORE = {"WebTemplateVersion": ""}  # the stack's parameters: made by a release that pins


def versions(app: Flask, outputs: dict[str, str]) -> dict[str, str]:
    return rollout.pinned_versions(aws_client("autoscaling", get_settings(app)), outputs, PINNED_BEFORE)


def test_a_stack_made_before_the_pinning_is_not_pinned(app: Flask, stack: dict[str, str]) -> None:  # noqa: F811
    """Its running versions have no launch hook step: new instances of them would wait on the hook forever."""
    assert rollout.pinned_versions(aws_client("autoscaling", get_settings(app)), stack, {"ReleaseKey": "x"}) == {}


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
    web, worker, ops = client.started
    assert web["AutoScalingGroupName"] == outputs["WebGroupName"]
    assert said.index(f"{outputs['WebGroupName']}: Successful 100%") < said.index(
        next(line for line in said if line.startswith(outputs["WorkerGroupName"]))
    ), "workers start only once the web (and its migrations) is through"
    preferences = web["Preferences"]
    assert (preferences["MinHealthyPercentage"], preferences["MaxHealthyPercentage"]) == (100, 200)
    assert preferences["ScaleInProtectedInstances"] == "Wait" and preferences["AutoRollback"] is True
    assert preferences["CheckpointPercentages"] == [50, 100] and preferences["SkipMatching"] is True
    name = stack["StackName"]
    assert preferences["AlarmSpecification"]["Alarms"] == [f"{name}-web-5xx", f"{name}-web-unhealthy-hosts"]
    assert worker["Preferences"]["AlarmSpecification"]["Alarms"] == [f"{name}-worker-errors"]
    assert "AlarmSpecification" not in ops["Preferences"], "the deep check never rolls a release back"
    assert web["DesiredConfiguration"] == {
        "LaunchTemplate": {"LaunchTemplateId": outputs["WebLaunchTemplateId"], "Version": new["Web"]}
    }, "a numbered version: what rollback needs"
    mixed = worker["DesiredConfiguration"]["MixedInstancesPolicy"]
    assert mixed["LaunchTemplate"]["LaunchTemplateSpecification"]["Version"] == new["Worker"]
    assert len(mixed["LaunchTemplate"]["Overrides"]) == 3, "the rest of the workers' policy kept"
    distribution = mixed["InstancesDistribution"]
    assert set(distribution) <= set(rollout.DISTRIBUTION) and distribution["SpotAllocationStrategy"]
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


def test_a_group_whose_alarms_fire_already_is_not_refreshed(
    app: Flask,
    stack: dict[str, str],  # noqa: F811
    released: tuple[dict[str, str], dict[str, str]],
) -> None:
    class Firing:
        def describe_alarms(self, AlarmNames: list[str], StateValue: str) -> dict:
            return {"MetricAlarms": [{"AlarmName": AlarmNames[0]}]}

    _, outputs = released
    client = Refreshing(aws_client("autoscaling", get_settings(app)), {})
    roll = rollout.Rollout(client, stack["StackName"], outputs, say=lambda _: None, poll=0, cloudwatch=Firing())
    with pytest.raises(SystemExit, match=f"its alarms are firing already \\({stack['StackName']}-web-5xx\\)"):
        roll.run()
    assert client.started == [], "a refresh that would roll back at once is not started"
