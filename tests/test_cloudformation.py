"""The CloudFormation template: clean under cfn-lint, and deployed into moto server's CloudFormation."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import uuid
from typing import Any

import pytest
from flask import Flask

from config import load_settings
from deploy import agents, docs
from deploy import stack as stack_tool
from deploy.stack import UNMODELLED_TYPES, check_parameters, for_moto
from domain.extensions import get_settings
from domain.storage import aws_client
from tests.conftest import ROOT

TEMPLATE = ROOT / "deploy" / "cloudformation.yaml"
# What moto can't model is listed in deploy/stack.py (UNMODELLED_TYPES); the test checks it in the template itself.
# Modelled types whose properties moto ignores: AWS::S3::Bucket (lifecycle, encryption, public access block).


def template() -> dict[str, Any]:
    """The template as deployed: the bootstrap in its user data."""
    return stack_tool.parse(stack_tool.render())


def role_grants(iam: Any, role: str, policy: str) -> dict[str, list[str]]:
    """Return each action a role's inline policy allows, with the resources it allows it on."""
    document = iam.get_role_policy(RoleName=role, PolicyName=policy)["PolicyDocument"]
    if isinstance(document, str):  # moto's CloudFormation stores the policy as Python's repr of the dict
        document = ast.literal_eval(document)
    grants: dict[str, list[str]] = {}
    for s in document["Statement"]:
        if s["Effect"] == "Allow":
            for action in [s["Action"]] if isinstance(s["Action"], str) else s["Action"]:
                grants.setdefault(action, []).extend(
                    [s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"]
                )
    return grants


def role_actions(iam: Any, role: str, policy: str) -> set[str]:
    """Return every action a role's inline policy allows."""
    return set(role_grants(iam, role, policy))


def test_cfn_lint_is_clean() -> None:
    cfn_lint = (
        str(ROOT / ".venv" / "bin" / "cfn-lint") if (ROOT / ".venv" / "bin" / "cfn-lint").exists() else "cfn-lint"
    )
    result = subprocess.run([cfn_lint, str(TEMPLATE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_what_moto_cannot_model_is_in_the_template() -> None:
    resources = template()["Resources"]
    types = {r["Type"] for r in resources.values()}
    assert types >= UNMODELLED_TYPES
    policy = resources["WorkerBacklogScaling"]["Properties"]["TargetTrackingConfiguration"]
    assert policy["TargetValue"] == {"Ref": "BacklogPerInstanceTarget"}
    # Backlog per instance by metric math on SQS's and the group's own metrics (moto evaluates no
    # expression: the same one is the scaling signal, the alarm on its absence and the dashboard's line).
    queries = {q["Id"]: q for q in policy["CustomizedMetricSpecification"]["Metrics"]}
    backlog = queries["backlog"]["Expression"]
    assert backlog == "IF(running > 0, (waiting + optimize) / running, waiting + optimize)"
    assert queries["backlog"]["ReturnData"]
    optimizing = queries["optimizing"]["MetricStat"]["Metric"]
    assert optimizing["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["OptimizeQueue", "QueueName"]}
    waiting, running = (queries[i]["MetricStat"]["Metric"] for i in ("waiting", "running"))
    assert (waiting["Namespace"], waiting["MetricName"]) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    assert waiting["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["WorkQueue", "QueueName"]}
    assert (running["Namespace"], running["MetricName"]) == ("AWS/AutoScaling", "GroupInServiceInstances")
    workers = resources["WorkerGroup"]["Properties"]
    assert running["Dimensions"][0]["Value"] == workers["AutoScalingGroupName"]
    missing = resources["BacklogMetricMissingAlarm"]["Properties"]
    alarm = {q["Id"]: q["Expression"] for q in missing["Metrics"] if "Expression" in q}
    assert alarm == {"optimize": queries["optimize"]["Expression"], "backlog": backlog}
    assert missing["TreatMissingData"] == "breaching"
    assert backlog in resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0]
    alarms = {
        r["Properties"].get("MetricName") or name
        for name, r in resources.items()
        if r["Type"] == "AWS::CloudWatch::Alarm"
    }
    assert alarms == {
        "ApproximateAgeOfOldestMessage",
        "ApproximateNumberOfMessagesVisible",
        "WorkerErrors",
        "BacklogMetricMissingAlarm",
        "Ready",
        "LoadBalancer5xxAlarm",
        "UnHealthyHostCount",
        "CPUUtilization",
        "FreeStorageSpace",
        "DatabaseConnections",
        "GroupInServiceInstances",
    }
    for name in ("WebGroup", "WorkerGroup", "OpsGroup"):
        group = resources[name]["Properties"]
        assert group["MetricsCollection"] == [{"Granularity": "1Minute"}] and group["DefaultInstanceWarmup"]
        hooks = {h["LifecycleTransition"]: h for h in group["LifecycleHookSpecificationList"]}
        launching = hooks["autoscaling:EC2_INSTANCE_LAUNCHING"]
        assert (launching["LifecycleHookName"], launching["DefaultResult"]) == ("bootstrapped", "ABANDON")
    # moto's CloudFormation creates the bucket but applies none of these properties
    bucket = resources["VideoBucket"]["Properties"]
    assert bucket["LifecycleConfiguration"]["Rules"][0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    quarantine = bucket["LifecycleConfiguration"]["Rules"][1]
    assert (quarantine["Prefix"], quarantine["ExpirationInDays"]) == ("quarantine/", {"Ref": "QuarantineDays"})
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    secret = resources["SecretKey"]["Properties"]["GenerateSecretString"]
    assert secret["PasswordLength"] >= 48, "generated, never typed into user data"
    launch = ("WebLaunchTemplate", "WorkerLaunchTemplate", "OpsLaunchTemplate")
    user_data = json.dumps([resources[n]["Properties"]["LaunchTemplateData"]["UserData"] for n in launch])
    assert "SecretKey" not in user_data and "FlowerPassword" not in user_data


@pytest.fixture
def stack(app: Flask) -> dict[str, str]:
    """The template deployed into moto server; its outputs."""
    ec2 = aws_client("ec2", get_settings(app))
    subnets = ",".join(s["SubnetId"] for s in ec2.describe_subnets()["Subnets"][:2])
    parameters = {
        "VpcId": ec2.describe_vpcs()["Vpcs"][0]["VpcId"],
        "ImageId": ec2.describe_images()["Images"][0]["ImageId"],
        "BakeImage": "false",  # moto has no Image Builder (test_the_image_is_baked_from_the_component)
        "PublicSubnetIds": subnets,
        "PrivateSubnetIds": subnets,
        "WorkerMaxSize": "4",
        "ReleaseBucket": "videoproc-releases",
        "ReleaseKey": "releases/videoproc-0.1.0-test.tar.gz",
        "ReleaseSha256": "0" * 64,
    }
    cloudformation = aws_client("cloudformation", get_settings(app))
    name = f"vp{uuid.uuid4().hex[:6]}"
    cloudformation.create_stack(  # moto warns about each type in UNMODELLED_TYPES (pyproject.toml ignores those)
        StackName=name,
        TemplateBody=json.dumps(for_moto(template())),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    described = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
    assert described["StackStatus"] == "CREATE_COMPLETE"
    return {"StackName": name, **{o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}}


def test_stack_in_moto(app: Flask, stack: dict[str, str]) -> None:
    config = get_settings(app)
    sqs = aws_client("sqs", config)
    work = sqs.get_queue_attributes(QueueUrl=stack["WorkQueueUrl"], AttributeNames=["All"])["Attributes"]
    dead = sqs.get_queue_attributes(QueueUrl=stack["DeadLetterQueueUrl"], AttributeNames=["QueueArn"])["Attributes"]
    redrive = json.loads(work["RedrivePolicy"])
    assert (redrive["deadLetterTargetArn"], int(redrive["maxReceiveCount"])) == (dead["QueueArn"], 5)
    assert (work["VisibilityTimeout"], work["ReceiveMessageWaitTimeSeconds"]) == ("120", "20")

    aws_client("s3", config).head_bucket(Bucket=stack["BucketName"])

    iam = aws_client("iam", config)
    resources = aws_client("cloudformation", config).list_stack_resources(StackName=stack["StackName"])
    physical = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources["StackResourceSummaries"]}
    actions = role_actions(iam, physical["WorkerRole"], "videoproc-worker")
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"} <= actions
    assert not any(a.endswith("*") for a in actions), "least privilege"
    consumed = {
        r.rsplit(":", 1)[1] for r in role_grants(iam, physical["WorkerRole"], "videoproc-worker")["sqs:ReceiveMessage"]
    }
    assert {f"{stack['StackName']}-videos", f"{stack['StackName']}-videos-optimize"} <= consumed, "both stages' queues"
    created = role_grants(iam, physical["WorkerRole"], "videoproc-worker")["sqs:CreateQueue"]
    assert [r.rsplit(":", 1)[1] for r in created] == [f"{stack['StackName']}-*-celery-pidbox"], "its mailbox only"
    web_actions = role_actions(iam, physical["WebRole"], "videoproc-web")
    for role in ("Web", "Worker", "Ops"):  # kombu is handed the stack's topics (SNS_*_TOPIC_ARN)
        grants = role_grants(iam, physical[f"{role}Role"], f"videoproc-{role.lower()}")
        assert "sns:CreateTopic" not in grants
        [login] = grants["rds-db:connect"]  # its own database user, by IAM token
        assert login.endswith(f":dbuser:unmodelled/videoproc_{role.lower()}"), login
    assert "secretsmanager:GetSecretValue" not in role_actions(iam, physical["WorkerRole"], "videoproc-worker")
    assert "sqs:SendMessage" in web_actions
    received = role_grants(iam, physical["WebRole"], "videoproc-web")["sqs:ReceiveMessage"]
    assert [r.rsplit(":", 1)[1] for r in received] == [f"{stack['StackName']}-videos-webhooks"], "webhooks only"

    autoscaling = aws_client("autoscaling", config)
    groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[stack["WorkerGroupName"]])
    workers = groups["AutoScalingGroups"][0]
    assert (workers["MinSize"], workers["MaxSize"]) == (1, 4)
    overrides = workers["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]
    assert len(overrides) == 3
    elb = aws_client("elbv2", config)
    [target_group] = physical["WebTargets"].split(",")[:1]
    [web] = elb.describe_target_groups(TargetGroupArns=[target_group])["TargetGroups"]
    assert web["HealthCheckPath"] == "/healthz", "shallow: a database failover replaces no instance"
    # No certificate in the rehearsal: port 80 forwards, and still keeps the internal paths to itself.
    [listener] = elb.describe_listeners(LoadBalancerArn=web["LoadBalancerArns"][0])["Listeners"]
    assert listener["Port"] == 80 and listener["DefaultActions"][0]["Type"] == "forward"
    [internal] = [r for r in elb.describe_rules(ListenerArn=listener["ListenerArn"])["Rules"] if not r["IsDefault"]]
    assert internal["Actions"][0]["FixedResponseConfig"]["StatusCode"] == "404"
    assert {"/readyz", "/metrics"} <= set(internal["Conditions"][0]["PathPatternConfig"]["Values"])


def test_https_with_a_certificate_and_port_80_redirects() -> None:
    resources = template()["Resources"]
    https = resources["HttpsListener"]
    assert https["Condition"] == "HasCertificate" and https["Properties"]["Port"] == 443
    assert https["Properties"]["SslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    with_certificate, without = resources["HttpListener"]["Properties"]["DefaultActions"]["Fn::If"][1:]
    assert with_certificate[0]["RedirectConfig"] == {"Protocol": "HTTPS", "Port": "443", "StatusCode": "HTTP_301"}
    assert without[0]["Type"] == "forward"
    assert resources["Database"]["Properties"]["EngineVersion"] == "17", "the major only: minors move under it"


def test_the_image_is_baked_from_the_component() -> None:
    resources = template()["Resources"]
    baked = {"Fn::If": ["BakeImage", {"Fn::GetAtt": ["Image", "ImageId"]}, {"Ref": "ImageId"}]}
    for name in ("WebLaunchTemplate", "WorkerLaunchTemplate", "OpsLaunchTemplate"):
        assert resources[name]["Properties"]["LaunchTemplateData"]["ImageId"] == baked, name
    image = resources["Image"]
    assert (image["DeletionPolicy"], image["UpdateReplacePolicy"]) == ("Retain", "Retain"), "rollbacks launch old AMIs"
    assert image["Properties"]["ImageTestsConfiguration"]["ImageTestsEnabled"]
    recipe = resources["ImageRecipe"]["Properties"]
    assert recipe["ParentImage"] == {"Ref": "ImageId"} and "${ImageId}" in recipe["Name"]["Fn::Sub"]
    assert recipe["AdditionalInstanceConfiguration"]["SystemsManagerAgent"]["UninstallAfterBuild"] is False
    component = resources["ImageComponent"]["Properties"]
    assert "python3-boto3 ffmpeg bubblewrap nginx-light" in component["Data"]["Fn::Sub"]
    agent = agents.packages("${AWS::Region}", "amd64")["amazon-cloudwatch-agent"]
    assert f"- source: {agent}" in component["Data"]["Fn::Sub"], "the image bakes the package the boot would fetch"
    # Image Builder refuses a changed document under a version it has: the rendered version follows the document.
    version = component["Version"]["Fn::Sub"]
    assert version == recipe["Version"]["Fn::Sub"] and version.startswith("1.${ImageRevision}.")
    source = stack_tool.TEMPLATE.read_text()
    changed = stack_tool.render(source.replace("- ffmpeg -hide_banner -version", "- ffmpeg -version"))
    assert stack_tool.parse(changed)["Resources"]["ImageComponent"]["Properties"]["Version"]["Fn::Sub"] != version
    elsewhere = stack_tool.render(source.replace("The VPC everything runs in.", "Another VPC."))
    assert stack_tool.parse(elsewhere)["Resources"]["ImageComponent"]["Properties"]["Version"]["Fn::Sub"] == version


def test_make_deploy_refuses_a_site_without_https() -> None:
    with pytest.raises(SystemExit, match="CertificateArn is required"):
        check_parameters({"ImageId": "ami-1"}, {})
    arn = "arn:aws:acm:us-east-1:123456789012:certificate/abc"
    check_parameters({"CertificateArn": arn}, {})
    check_parameters({}, {"CertificateArn": arn})  # an update keeps the stack's certificate


def test_the_reference_in_the_docs_follows_the_template() -> None:
    page, template = docs.PAGE.read_text(), stack_tool.TEMPLATE.read_text()
    assert docs.updated(page, docs.reference(template)) == page, "run python -m deploy.docs"
    changed = docs.reference(template.replace("The VPC everything runs in.", "Another VPC."))
    assert "| `VpcId` | AWS::EC2::VPC::Id | required | Another VPC. |" in changed
    logs = "`logs:CreateLogStream`, `logs:PutLogEvents`, `logs:DescribeLogStreams`"
    assert f"| Logs | {logs} | `WorkerLogs.Arn` |" in changed
    assert docs.updated(page, changed) != page


def test_the_queue_has_the_attributes_the_app_checks_itself_against(monkeypatch: pytest.MonkeyPatch) -> None:
    declared = stack_tool.declared
    changed = {"SQS_VISIBILITY_TIMEOUT": 300, "SQS_MAX_RECEIVE_COUNT": 9}

    def with_changes(name: str) -> Any:
        return dataclasses.replace(declared(name), default=changed.get(name, declared(name).default))

    monkeypatch.setattr(stack_tool, "declared", with_changes)
    queue = template()["Resources"]["WorkQueue"]["Properties"]
    assert (queue["VisibilityTimeout"], queue["RedrivePolicy"]["maxReceiveCount"]) == (300, 9), "made from the settings"
    assert queue["ReceiveMessageWaitTimeSeconds"] == load_settings({}).SQS_WAIT_TIME_SECONDS
    marked = stack_tool.FROM_SETTINGS.findall(TEMPLATE.read_text())
    assert {m[3] for m in marked} >= {"SQS_VISIBILITY_TIMEOUT", "SQS_MAX_RECEIVE_COUNT", "SQS_RETENTION_SECONDS"}
    assert all(value == str(declared(name).default) for _, value, _, name in marked), "the source reads true too"


def _python(expression: str) -> str:
    """Return CloudWatch metric math's ``IF(c, a, b)`` as Python's ``(a if c else b)`` (only the branch taken runs)."""
    start = expression.find("IF(")
    if start < 0:
        return expression
    depth, args, piece = 0, [], ""
    for end in range(start + 3, len(expression)):
        char = expression[end]
        if char == "," and depth == 0:
            args, piece = [*args, piece], ""
            continue
        if char == ")" and depth == 0:
            break
        depth += {"(": 1, ")": -1}.get(char, 0)
        piece += char
    condition, yes, no = (_python(arg.strip()) for arg in [*args, piece])
    return expression[:start] + f"(({yes}) if ({condition}) else ({no}))" + _python(expression[end + 1 :])


def _scaled_to(template_expressions: dict[str, str], target: float, cap: int, **metrics: float) -> float:
    """Evaluate the scaling policy's metric math, then target tracking's answer: running * metric / target."""

    values = dict(metrics)
    for name in ("optimize", "backlog"):
        expression = template_expressions[name].replace("${OptimizeMaxInstances}", str(cap))
        expression = _python(expression.replace("${BacklogPerInstanceTarget}", str(target)))
        values[name] = eval(expression, {}, values)  # the template's own text: two simple formulas
    return max(metrics["running"], 1) * values["backlog"] / target


def test_a_backlog_of_optimize_work_alone_never_scales_the_workers_past_its_setting() -> None:
    policy = template()["Resources"]["WorkerBacklogScaling"]["Properties"]["TargetTrackingConfiguration"]
    queries = policy["CustomizedMetricSpecification"]["Metrics"]
    expressions = {q["Id"]: q["Expression"] for q in queries if "Expression" in q}
    expressions = {k: v["Fn::Sub"] if isinstance(v, dict) else v for k, v in expressions.items()}
    for cap in (0, 1, 3):
        for running in (0, 1, 5):
            alone = _scaled_to(expressions, 4, cap, waiting=0, optimizing=100_000, running=running)
            assert alone == pytest.approx(cap), (cap, running)
        # With uploads waiting, the optimize work adds at most `cap` instances to what they ask for.
        busy = _scaled_to(expressions, 4, cap, waiting=40, optimizing=100_000, running=2)
        assert busy == pytest.approx(10 + cap)
    assert _scaled_to(expressions, 4, 1, waiting=0, optimizing=2, running=1) == pytest.approx(0.5), "a little, a little"
