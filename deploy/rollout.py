"""Roll a release out to the running instances: one instance refresh per group (``make deploy``).

A stack update only adds a launch template version: the groups stay on the version they run
(``<Role>TemplateVersion``, read from the group before the update, ``pinned_versions``). Then
``Rollout.run`` starts an instance refresh per group towards the new version, web first:

- a new web instance runs the migrations (``videoproc-migrate.service``) before gunicorn
  starts, so the schema is migrated once, before any new code serves; workers and ops follow
  only once the web refresh has succeeded (migrations add, never drop, while old code runs);
- minimum healthy 100 %, maximum 200 %: new instances join before old ones leave;
- checkpoints at 50 % and 100 %, with a pause to watch the alarms;
- instances protected from scale in (a worker busy with a job) are replaced only once the
  worker lifts the protection, idle (``ScaleInProtectedInstances: Wait``, up to AWS's hour);
- automatic rollback to the version the group ran when a replacement fails or one of the
  role's alarms fires (``AutoRollback`` with the alarms; it needs a desired configuration and
  numbered versions, hence the pinning); a refresh whose alarms fire already is not started.

The refresh moves the group's own configuration to the new version on success, and the next
``make deploy`` pins that one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ROLES = ("Web", "Worker", "Ops")
WAVES = (("Web",), ("Worker", "Ops"))  # web (and its migrations) first
# The alarms that roll a group's refresh back: what its new instances themselves cause. Not the
# deep check (<stack>-not-ready): it follows the database and the ops instance's timer, and is
# in alarm on a stack whose sweeper predates it, which would roll every release back.
ALARMS: dict[str, tuple[str, ...]] = {
    "Web": ("web-5xx", "web-unhealthy-hosts"),
    "Worker": ("worker-errors",),
    "Ops": (),
}
# What StartInstanceRefresh takes back of a mixed-instances policy's distribution (Describe adds more).
DISTRIBUTION = (
    "OnDemandAllocationStrategy",
    "OnDemandBaseCapacity",
    "OnDemandPercentageAboveBaseCapacity",
    "SpotAllocationStrategy",
)
DONE = {"Successful", "Failed", "Cancelled", "RollbackSuccessful", "RollbackFailed"}
PREFERENCES = {
    "MinHealthyPercentage": 100,
    "MaxHealthyPercentage": 200,
    "CheckpointPercentages": [50, 100],
    "CheckpointDelay": 300,
    "SkipMatching": True,
    "ScaleInProtectedInstances": "Wait",
    "StandbyInstances": "Wait",
    "AutoRollback": True,
}


def template_spec(group: Mapping[str, Any]) -> dict[str, Any]:
    """Return the launch template a group uses (plain, or inside its mixed-instances policy)."""
    if "LaunchTemplate" in group:
        return dict(group["LaunchTemplate"])
    return dict(group["MixedInstancesPolicy"]["LaunchTemplate"]["LaunchTemplateSpecification"])


def pinned_versions(autoscaling: Any, outputs: Mapping[str, str], previous: Mapping[str, str]) -> dict[str, str]:
    """Return ``<Role>TemplateVersion`` parameters: the version each existing group runs now.

    None for a stack made before the pinning (``previous``, its parameters, have none): its
    running versions predate the launch hook their new instances would wait on forever, so
    that one update moves the groups to the latest version, and the refresh replaces the rest.
    """
    if "WebTemplateVersion" not in previous:
        return {}
    names = {outputs[f"{role}GroupName"]: role for role in ROLES if f"{role}GroupName" in outputs}
    if not names:
        return {}
    found = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=list(names))["AutoScalingGroups"]
    return {f"{names[g['AutoScalingGroupName']]}TemplateVersion": str(template_spec(g)["Version"]) for g in found}


def desired_configuration(group: Mapping[str, Any], template_id: str, version: str) -> dict[str, Any]:
    """Return the group's configuration with its launch template at ``version`` (numbered: rollback needs it)."""
    spec = {"LaunchTemplateId": template_id, "Version": version}
    if "LaunchTemplate" in group:
        return {"LaunchTemplate": spec}
    policy = group["MixedInstancesPolicy"]
    template = {"LaunchTemplateSpecification": spec, "Overrides": policy["LaunchTemplate"].get("Overrides", [])}
    distribution = {k: v for k, v in policy.get("InstancesDistribution", {}).items() if k in DISTRIBUTION}
    return {"MixedInstancesPolicy": {"LaunchTemplate": template, "InstancesDistribution": distribution}}


@dataclass
class Refresh:
    """One group's refresh: what it was asked and how it ended."""

    role: str
    group: str
    version: str
    refresh_id: str | None = None  # None: the group already runs this version
    status: str = "Skipped"
    reason: str = ""


class Rollout:
    """Refresh every group of a stack to its new launch template version, wave by wave."""

    def __init__(
        self,
        autoscaling: Any,
        stack: str,
        outputs: Mapping[str, str],
        say: Callable[[str], None] = print,
        poll: float = 30,
        timeout: float = 3 * 3600,
        cloudwatch: Any = None,
    ) -> None:
        self.autoscaling, self.stack, self.outputs, self.cloudwatch = autoscaling, stack, outputs, cloudwatch
        self.say, self.poll, self.timeout = say, poll, timeout

    def start(self, role: str) -> Refresh:
        """Start ``role``'s refresh towards the stack's latest version of its launch template."""
        name = self.outputs[f"{role}GroupName"]
        group = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
        version = self.outputs[f"{role}LaunchTemplateVersion"]
        refresh = Refresh(role, name, version)
        running = {str(i.get("LaunchTemplate", {}).get("Version")) for i in group["Instances"]}
        if str(template_spec(group)["Version"]) == version and running <= {version}:
            return refresh  # the group and every instance in it are on the version already
        alarms = [f"{self.stack}-{alarm}" for alarm in ALARMS[role]]
        if self.cloudwatch is not None and alarms:
            firing = self.cloudwatch.describe_alarms(AlarmNames=alarms, StateValue="ALARM")["MetricAlarms"]
            if firing:  # the refresh would roll back at once
                names = ", ".join(a["AlarmName"] for a in firing)
                raise SystemExit(f"{name}: not refreshed, its alarms are firing already ({names})")
        preferences: dict[str, Any] = dict(PREFERENCES)
        if alarms:
            preferences["AlarmSpecification"] = {"Alarms": alarms}
        answer = self.autoscaling.start_instance_refresh(
            AutoScalingGroupName=name,
            Strategy="Rolling",
            DesiredConfiguration=desired_configuration(group, self.outputs[f"{role}LaunchTemplateId"], version),
            Preferences=preferences,
        )
        refresh.refresh_id, refresh.status = answer["InstanceRefreshId"], "Pending"
        self.say(f"{name}: instance refresh {refresh.refresh_id} to launch template version {version}")
        return refresh

    def wait(self, refreshes: Iterable[Refresh]) -> None:
        """Poll until every refresh has ended, saying each one's progress as it changes."""
        pending = [r for r in refreshes if r.refresh_id]
        deadline, said = time.monotonic() + self.timeout, dict[str, str]()
        while pending:
            for refresh in list(pending):
                found = self.autoscaling.describe_instance_refreshes(
                    AutoScalingGroupName=refresh.group, InstanceRefreshIds=[refresh.refresh_id]
                )["InstanceRefreshes"][0]
                refresh.status, refresh.reason = found["Status"], found.get("StatusReason", "")
                line = f"{refresh.group}: {refresh.status} {found.get('PercentageComplete', 0)}%"
                if said.get(refresh.group) != line:
                    self.say(line + (f" ({refresh.reason})" if refresh.reason else ""))
                    said[refresh.group] = line
                if refresh.status in DONE:
                    pending.remove(refresh)
            if pending and time.monotonic() > deadline:
                raise SystemExit(f"instance refreshes still running after {self.timeout:.0f}s: {pending}")
            if pending:
                time.sleep(self.poll)

    def run(self) -> list[Refresh]:
        """Refresh web first, then workers and ops; stop at the first wave that did not succeed."""
        done: list[Refresh] = []
        for wave in WAVES:
            refreshes = [self.start(role) for role in wave if f"{role}GroupName" in self.outputs]
            self.wait(refreshes)
            done += refreshes
            failed = [r for r in refreshes if r.status not in ("Successful", "Skipped")]
            if failed:
                summary = "; ".join(f"{r.group}: {r.status} {r.reason}".strip() for r in failed)
                raise SystemExit(f"rollout stopped ({summary}); later groups were left on their version")
        return done

    def report(self) -> list[str]:
        """Return one line per instance: its group, id, zone, launch template version and state."""
        names = [self.outputs[f"{role}GroupName"] for role in ROLES if f"{role}GroupName" in self.outputs]
        lines = []
        for group in self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=names)["AutoScalingGroups"]:
            for instance in group["Instances"]:
                version = instance.get("LaunchTemplate", {}).get("Version", "?")
                lines.append(
                    f"{group['AutoScalingGroupName']}: {instance['InstanceId']} in {instance['AvailabilityZone']}"
                    f" runs launch template version {version} ({instance['LifecycleState']})"
                )
        return lines
