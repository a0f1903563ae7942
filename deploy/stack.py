"""Render, deploy and check the CloudFormation stack (``make deploy``, ``make deploy-local``).

Usage:
  python -m deploy.stack render [--out build/cloudformation.yaml]
  python -m deploy.stack deploy --stack NAME [--parameters FILE] [KEY=VALUE ...]
  python -m deploy.stack deploy-local [--stack NAME]

``render`` puts ``deploy/bootstrap.sh`` into every launch template's user data.
``deploy`` builds the release (``deploy/release.py``), uploads it and the rendered template
to the release bucket (``RELEASE_BUCKET``, or ``<stack>-releases-<account>-<region>``,
created when missing), creates or updates the stack with ``ReleaseKey`` set to the new
release, which adds a launch template version per group while each group stays pinned to
the version it runs, then rolls the release out by instance refresh, web first
(``deploy/rollout.py``), and waits until every group has its instances in service (and
the web's targets healthy). ``deploy-local`` does the same against a moto server of its
own (or ``--endpoint``), with the parameters moto's default VPC gives and the resources moto
can't model left out, then rehearses the roles under IAM enforcement (``deploy/rehearsal.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from config.settings import declared
from deploy import release, rollout

DEPLOY = Path(__file__).resolve().parent
TEMPLATE = DEPLOY / "cloudformation.yaml"
BOOTSTRAP = DEPLOY / "bootstrap.sh"
PLACEHOLDER = re.compile(r'^(?P<indent> *)- Bootstrap: "@BOOTSTRAP@"$', re.MULTILINE)
USER_DATA_LIMIT = 16 * 1024  # EC2's limit, before base64
# `Key: value  # setting: NAME`: render writes the setting's declared default there (config/settings.py).
FROM_SETTINGS = re.compile(
    r"^(?P<head> *\w+: )(?P<value>\S+)(?P<tail>  # setting: (?P<name>[A-Z0-9_]+))$", re.MULTILINE
)
# The image component's document, and the version its component and recipe carry (Image Builder
# refuses a changed document under a version it has: the patch becomes the document's digest).
IMAGE_COMPONENT = re.compile(r"^  ImageComponent:\n.*?(?=^  ImageRecipe:)", re.MULTILINE | re.DOTALL)
IMAGE_VERSION = "Version: !Sub 1.${ImageRevision}.0"
# What moto's CloudFormation can't model: it skips these types with a warning and can't resolve these attributes.
UNMODELLED_TYPES = {
    "AWS::S3::BucketPolicy",
    "AWS::SecretsManager::Secret",
    "AWS::ElastiCache::SubnetGroup",
    "AWS::ElastiCache::CacheCluster",
    "AWS::AutoScaling::ScalingPolicy",
    "AWS::CloudWatch::Alarm",
    "AWS::Logs::MetricFilter",
}
UNMODELLED_ATTRIBUTES = ("Database.Endpoint", "Database.MasterUserSecret", "Database.DbiResourceId", "RateLimitCache")
GROUP_OUTPUTS = ("WebGroupName", "WorkerGroupName", "OpsGroupName")


def render(template: str | None = None, bootstrap: str | None = None) -> str:
    """Return the template with ``deploy/bootstrap.sh`` as every launch template's bootstrap.

    The values marked ``# setting: NAME`` (the queue's attributes) become the settings' declared
    defaults: the queue has the visibility timeout and receive count the app checks itself against.
    """
    template = TEMPLATE.read_text() if template is None else template
    bootstrap = BOOTSTRAP.read_text() if bootstrap is None else bootstrap
    if len(bootstrap.encode()) > USER_DATA_LIMIT - 1024:
        raise ValueError(f"deploy/bootstrap.sh is too large for user data ({USER_DATA_LIMIT} bytes with its header)")

    def block(match: re.Match[str]) -> str:
        indent = match["indent"] + "    "
        lines = "\n".join(indent + line if line else "" for line in bootstrap.rstrip("\n").splitlines())
        return f"{match['indent']}- Bootstrap: |\n{lines}"

    rendered, count = PLACEHOLDER.subn(block, template)
    if not count:
        raise ValueError("no bootstrap placeholder in the template")
    rendered = FROM_SETTINGS.sub(lambda m: f"{m['head']}{declared(m['name']).default}{m['tail']}", rendered)
    component = IMAGE_COMPONENT.search(rendered)
    if component:
        patch = int(hashlib.sha256(component[0].encode()).hexdigest()[:7], 16)
        rendered = rendered.replace(IMAGE_VERSION, IMAGE_VERSION.removesuffix("0") + str(patch))
    return rendered


def for_moto(node: Any) -> Any:
    """Return a parsed template with what moto can't resolve replaced by the word ``unmodelled``."""
    if isinstance(node, dict):
        if "Fn::GetAtt" in node and ".".join(node["Fn::GetAtt"]).startswith(UNMODELLED_ATTRIBUTES):
            return "unmodelled"
        sub = node.get("Fn::Sub")
        if isinstance(sub, list) and all(isinstance(v, str) for v in sub[1].values()):
            # moto substitutes again inside a variable's value (the bootstrap's own ${...}): join instead
            pieces = re.split(r"\$\{(" + "|".join(map(re.escape, sub[1])) + r")\}", sub[0])
            parts = [sub[1][p] if i % 2 else for_moto({"Fn::Sub": p}) for i, p in enumerate(pieces) if p]
            return {"Fn::Join": ["", parts]}
        if isinstance(sub, str):
            names = "|".join(re.escape(name) for name in UNMODELLED_ATTRIBUTES)
            return {"Fn::Sub": re.sub(r"\$\{(?:" + names + r")[^}]*\}", "unmodelled", sub)}
        return {key: for_moto(value) for key, value in node.items()}
    if isinstance(node, list):
        return [for_moto(value) for value in node]
    return node


def parse(text: str) -> dict[str, Any]:
    """Parse a CloudFormation YAML template (short-form functions included) into plain JSON data."""
    import tempfile

    from cfnlint.decode import cfn_yaml  # a development dependency: deploying needs it, instances don't

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(text)
        f.flush()
        return json.loads(json.dumps(cfn_yaml.load(f.name), default=str))


class Deployer:
    """Create or update one stack and wait for its groups."""

    def __init__(self, stack: str, endpoint: str | None = None, region: str | None = None) -> None:
        self.stack = stack
        session = boto3.session.Session(region_name=region or os.environ.get("AWS_REGION") or "us-east-1")
        self.region = session.region_name
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"} if endpoint else {}
        self.client = lambda service, **given: session.client(service, endpoint_url=endpoint, **(credentials | given))
        self.cloudformation = self.client("cloudformation")

    def release_bucket(self) -> str:
        """Return the release bucket, created (private, encrypted) when missing."""
        s3 = self.client("s3")
        account = self.client("sts").get_caller_identity()["Account"]
        bucket = os.environ.get("RELEASE_BUCKET") or f"{self.stack}-releases-{account}-{self.region}".lower()
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError:
            where = {} if self.region == "us-east-1" else {"LocationConstraint": self.region}
            s3.create_bucket(Bucket=bucket, **({"CreateBucketConfiguration": where} if where else {}))
            s3.put_public_access_block(
                Bucket=bucket,
                PublicAccessBlockConfiguration=dict.fromkeys(
                    ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
                ),
            )
        return bucket

    def exists(self) -> bool:
        """Return whether the stack exists (and is not deleted)."""
        try:
            stacks = self.cloudformation.describe_stacks(StackName=self.stack)["Stacks"]
        except ClientError:
            return False
        return bool(stacks) and stacks[0]["StackStatus"] != "DELETE_COMPLETE"

    def apply(self, template: dict[str, Any], parameters: Mapping[str, str]) -> None:
        """Create or update the stack from ``template`` (a URL or a body) and wait until it is complete."""
        update = self.exists()
        given: list[dict[str, Any]] = [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()]
        if update:
            previous = self.cloudformation.describe_stacks(StackName=self.stack)["Stacks"][0].get("Parameters", [])
            given += [
                {"ParameterKey": p["ParameterKey"], "UsePreviousValue": True}
                for p in previous
                if p["ParameterKey"] not in parameters
            ]
        request = {"StackName": self.stack, "Parameters": given, "Capabilities": ["CAPABILITY_IAM"], **template}
        if update:
            try:
                self.cloudformation.update_stack(**request)
            except ClientError as exc:
                if "No updates are to be performed" not in str(exc):
                    raise
                return
        else:
            self.cloudformation.create_stack(**request)
        waiter = self.cloudformation.get_waiter("stack_update_complete" if update else "stack_create_complete")
        waiter.wait(StackName=self.stack, WaiterConfig={"Delay": 15, "MaxAttempts": 240})

    def outputs(self) -> dict[str, str]:
        """Return the stack's outputs."""
        stack = self.cloudformation.describe_stacks(StackName=self.stack)["Stacks"][0]
        return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}

    def groups_healthy(self, outputs: Mapping[str, str]) -> dict[str, str]:
        """Return, per group, ``"ok"`` or what it still waits for."""
        autoscaling, elb = self.client("autoscaling"), self.client("elbv2")
        names = [outputs[key] for key in GROUP_OUTPUTS if key in outputs]
        state = {}
        for group in autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=names)["AutoScalingGroups"]:
            in_service = [i for i in group["Instances"] if i["LifecycleState"] == "InService"]
            want = max(group["MinSize"], group["DesiredCapacity"])
            problem = f"{len(in_service)}/{want} in service" if len(in_service) < want else ""
            for target_group in group.get("TargetGroupARNs", []):
                health = elb.describe_target_health(TargetGroupArn=target_group)["TargetHealthDescriptions"]
                healthy = [h for h in health if h["TargetHealth"]["State"] == "healthy"]
                if len(healthy) < want:
                    problem = problem or f"{len(healthy)}/{want} targets healthy"
            state[group["AutoScalingGroupName"]] = problem or "ok"
        return state

    def wait_healthy(self, outputs: Mapping[str, str], timeout: float = 1200) -> dict[str, str]:
        """Wait until every group is healthy; return the last state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.groups_healthy(outputs)
            print("  " + ", ".join(f"{name}: {what}" for name, what in state.items()), flush=True)
            if all(what == "ok" for what in state.values()) or time.monotonic() > deadline:
                return state
            time.sleep(15)


def previous_parameters(deployer: Deployer) -> dict[str, str]:
    """Return the stack's current parameters (none when it does not exist yet)."""
    if not deployer.exists():
        return {}
    found = deployer.cloudformation.describe_stacks(StackName=deployer.stack)["Stacks"][0].get("Parameters", [])
    return {p["ParameterKey"]: p.get("ParameterValue", "") for p in found}


def check_parameters(parameters: Mapping[str, str], previous: Mapping[str, str]) -> None:
    """Refuse what AWS would take but the service must not run with: a site without HTTPS."""
    if not parameters.get("CertificateArn", previous.get("CertificateArn")):
        raise SystemExit(
            "CertificateArn is required: the load balancer serves the API over HTTPS only"
            " (passwords and tokens cross it). Request one in ACM for the site's name and pass"
            " CertificateArn=arn:aws:acm:... (only make deploy-local serves plain HTTP)."
        )


def deploy(deployer: Deployer, parameters: Mapping[str, str], local: bool = False) -> dict[str, str]:
    """Build and upload the release, create or update the stack, wait for the groups; return the outputs."""
    if not local:
        check_parameters(parameters, previous_parameters(deployer))
    print(f"building the release for {deployer.stack}", flush=True)
    built = release.build(DEPLOY.parent / "dist")
    bucket = deployer.release_bucket()
    key = f"releases/{built.name}"
    s3 = deployer.client("s3")
    s3.upload_file(str(built), bucket, key)
    print(f"uploaded s3://{bucket}/{key}", flush=True)
    text = render()
    parameters = {**parameters, "ReleaseBucket": bucket, "ReleaseKey": key, "ReleaseSha256": release.checksum(built)}
    if local:
        template = {"TemplateBody": json.dumps(for_moto(parse(text)))}
    else:  # a rendered template is larger than create_stack's 51,200-byte body: pass it by URL
        template_key = f"templates/{deployer.stack}-{built.name.removesuffix('.tar.gz')}.yaml"
        s3.put_object(Bucket=bucket, Key=template_key, Body=text.encode())
        host = f"s3.{deployer.region}.amazonaws.com"
        template = {"TemplateURL": f"https://{host}/{bucket}/{template_key}"}
    autoscaling = deployer.client("autoscaling")
    if deployer.exists():  # the update adds launch template versions; the refreshes move the groups
        running = rollout.pinned_versions(autoscaling, deployer.outputs(), previous_parameters(deployer))
        parameters = {**running, **parameters}
        print(f"updating stack {deployer.stack}; groups stay on {running} until refreshed", flush=True)
    else:
        print(f"creating stack {deployer.stack}", flush=True)
    deployer.apply(template, parameters)
    outputs = deployer.outputs()
    if local:  # moto has no instance refresh (tests/test_rollout.py runs the logic on a stand-in)
        print("moto has no instance refresh: the groups keep their version", flush=True)
    else:
        cloudwatch = deployer.client("cloudwatch")
        roll = rollout.Rollout(
            autoscaling, deployer.stack, outputs, say=lambda line: print(line, flush=True), cloudwatch=cloudwatch
        )
        roll.run()
        for line in roll.report():
            print(line, flush=True)
    state = deployer.wait_healthy(outputs, timeout=60 if local else 1200)
    if any(what != "ok" for what in state.values()):
        raise SystemExit(f"groups not healthy: {state}")
    return outputs


def local_parameters(deployer: Deployer) -> dict[str, str]:
    """Return the parameters moto's default VPC, subnets and images give (no bake: moto has no Image Builder)."""
    ec2 = deployer.client("ec2")
    vpc = next(v for v in ec2.describe_vpcs()["Vpcs"] if v.get("IsDefault")) or ec2.describe_vpcs()["Vpcs"][0]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])["Subnets"]
    ids = ",".join(s["SubnetId"] for s in subnets[:2])
    image = ec2.describe_images()["Images"][0]["ImageId"]
    return {
        "VpcId": vpc["VpcId"],
        "PublicSubnetIds": ids,
        "PrivateSubnetIds": ids,
        "ImageId": image,
        "BakeImage": "false",
    }


def describe_local(deployer: Deployer, outputs: Mapping[str, str]) -> None:
    """Print what the local stack holds: groups and their instances, and that user data carries the bootstrap."""
    autoscaling, ec2 = deployer.client("autoscaling"), deployer.client("ec2")
    names = [outputs[key] for key in GROUP_OUTPUTS]
    for group in autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=names)["AutoScalingGroups"]:
        spec = (
            group.get("LaunchTemplate")
            or group["MixedInstancesPolicy"]["LaunchTemplate"]["LaunchTemplateSpecification"]
        )
        version = ec2.describe_launch_template_versions(LaunchTemplateId=spec["LaunchTemplateId"])
        data = version["LaunchTemplateVersions"][0]["LaunchTemplateData"]
        import base64

        user_data = base64.b64decode(data["UserData"]).decode()
        role = re.search(r"VIDEOPROC_ROLE=(\w+)", user_data)
        print(
            f"group {group['AutoScalingGroupName']}: {len(group['Instances'])} instance(s) in service, "
            f"size {group['MinSize']}-{group['MaxSize']}, user data {len(user_data)} bytes "
            f"(role {role[1] if role else '?'}, bootstrap {'embedded' if 'deploy.units' in user_data else 'MISSING'})"
        )
    for key, value in outputs.items():
        print(f"output {key} = {value}")


def main(argv: list[str] | None = None) -> int:
    """Render, deploy, or deploy locally."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    render_cmd = sub.add_parser("render")
    render_cmd.add_argument("--out", type=Path, default=DEPLOY.parent / "build" / "cloudformation.yaml")
    deploy_cmd = sub.add_parser("deploy")
    deploy_cmd.add_argument("--stack", required=True)
    deploy_cmd.add_argument("--parameters", type=Path, help="a JSON object of the stack's parameters")
    deploy_cmd.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    local_cmd = sub.add_parser("deploy-local")
    local_cmd.add_argument("--stack", default="videoproc-local")
    local_cmd.add_argument(
        "--endpoint", help="an existing moto server (no rehearsal there: it would turn IAM enforcement on for all)"
    )
    args = parser.parse_args(argv)

    if args.command == "render":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render())
        print(args.out)
        return 0
    if args.command == "deploy":
        parameters = json.loads(args.parameters.read_text()) if args.parameters else {}
        parameters |= dict(item.split("=", 1) for item in args.overrides)
        deploy(Deployer(args.stack), parameters)
        return 0
    return deploy_local(args.stack, args.endpoint)


def deploy_local(stack: str, endpoint: str | None = None) -> int:
    """Deploy into a moto server of this run's own, then rehearse the roles under IAM enforcement.

    With ``endpoint`` (a moto server already running) the stack is deployed there and not
    rehearsed: the rehearsal turns IAM enforcement on for the whole server.
    """
    import warnings

    from deploy import rehearsal

    # moto names each resource type it skips (UNMODELLED_TYPES): known, and listed in docs/deploy-aws.md
    warnings.filterwarnings("ignore", message="(No Moto CloudFormation support|Tried to parse)")
    server = None
    if endpoint is None:
        from moto.server import ThreadedMotoServer

        port = rehearsal.free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=bool(os.environ.get("MOTO_VERBOSE")))
        server.start()
        endpoint = f"http://127.0.0.1:{port}"
        print(f"started moto server at {endpoint} for this run", flush=True)
    try:
        deployer = Deployer(stack, endpoint=endpoint)
        outputs = deploy(deployer, local_parameters(deployer), local=True)
        describe_local(deployer, outputs)
        print(f"stack {stack} deployed into moto server; names moto can't model read 'unmodelled'", flush=True)
        if server is not None:
            template = parse(render())
            rehearsal.rehearse(deployer.client, endpoint, stack, template, say=lambda line: print(line, flush=True))
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
