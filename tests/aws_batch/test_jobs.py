"""A step's AWS Batch job (``airflow_flowspec.aws_batch.jobs``): the settings a flow's decorators ask
for and their trip through a DAG's serialized arguments, the job definition's content and name, the
overrides, names and tags each job is submitted with. No AWS here: test_batch_client.py registers."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest
from harness import REPO

from airflow_flowspec import FlowSpec, batch, resources, step, timeout
from airflow_flowspec.aws_batch import jobs
from airflow_flowspec.aws_batch.jobs import (
    BatchJobSettings,
    container_overrides,
    job_definition_document,
    job_definition_name,
    job_name,
    job_tags,
    step_job_settings,
)
from airflow_flowspec.errors import BatchJobSpecError

CONFIG = {"queue": "flowspec-queue", "job_definition": "", "image": "repo/flowspec:1", "iam_role": ""}
VALID_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class TrainFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @batch(cpu=2, memory=2048, queue="gpu-queue", image="repo/train:2", iam_role="arn:aws:iam::1:role/train")
    @resources(cpu=1, memory=8192, gpu=1, disk=20480)
    @timeout(seconds=30)
    @step
    def train(self):
        self.next(self.end)

    @step
    def end(self):
        pass


def settings_for(step_func, **config):
    return step_job_settings(step_func, flow_name="TrainFlow", step_name="train", **{**CONFIG, **config})


def train_step(*decorators):
    """A step function with the given decorators applied, the first one outermost."""

    @step
    def train(self):
        pass

    for decorator in reversed(decorators):
        train = decorator(train)
    return train


# ---------------------------------------------------------------------- settings


def test_a_flow_step_gets_its_decorators_over_the_configuration():
    settings = settings_for(TrainFlow.train)
    assert (settings.queue, settings.image, settings.iam_role) == (
        "gpu-queue",
        "repo/train:2",
        "arn:aws:iam::1:role/train",
    )
    assert settings.job_definition is None
    assert (settings.cpu, settings.memory, settings.gpu) == ("2", "8192", "1")
    assert settings.ephemeral_storage is None  # @resources(disk) is not a Batch setting (Metaflow)
    assert settings.timeout_seconds == 60


def test_a_step_without_decorators_gets_the_configuration_and_metaflows_defaults():
    settings = settings_for(TrainFlow.end, iam_role="arn:aws:iam::1:role/flows")
    assert (settings.queue, settings.image, settings.iam_role) == (
        "flowspec-queue",
        "repo/flowspec:1",
        "arn:aws:iam::1:role/flows",
    )
    assert (settings.cpu, settings.memory, settings.gpu) == ("1", "4096", "0")
    assert settings.timeout_seconds is None and settings.ephemeral_storage is None and settings.tags == {}


@pytest.mark.parametrize(
    ("decorators", "expected"),
    [
        ((), ("1", "4096", "0")),
        ((batch(cpu=2, memory=8192),), ("2", "8192", "0")),
        ((batch(memory=2048),), ("1", "2048", "0")),  # without @resources, @batch over the defaults
        ((batch(memory=2048), resources()), ("1", "4096", "0")),  # @resources' defaults take part
        ((batch(memory=2048), resources(memory=1024)), ("1", "2048", "0")),
        ((batch(cpu=4), resources(cpu=2)), ("4", "4096", "0")),
        ((batch(cpu=2), resources(cpu=8, memory=16000)), ("8", "16000", "0")),
        ((batch(cpu=0.5), resources(cpu=0.25)), ("0.5", "4096", "0")),
        ((batch(cpu=2.0),), ("2", "4096", "0")),  # Batch refuses "2.0" on EC2
        ((resources(memory=16000, gpu=2),), ("1", "16000", "2")),
        ((batch(gpu=1), resources(gpu=2)), ("1", "4096", "2")),
        ((batch(gpu=4), resources(gpu=2)), ("1", "4096", "4")),
        ((batch(gpu="2.0"),), ("1", "4096", "2")),
    ],
)
def test_the_larger_of_batch_and_resources_wins(decorators, expected):
    settings = settings_for(train_step(*decorators))
    assert (settings.cpu, settings.memory, settings.gpu) == expected


def test_shared_memory_is_sized_by_the_same_rule():
    settings = settings_for(train_step(batch(shared_memory=512), resources(shared_memory=2048)))
    assert settings.shared_memory == 2048


def test_values_that_are_not_numbers_must_agree():
    with pytest.raises(BatchJobSpecError) as error:
        settings_for(train_step(batch(gpu=1), resources(gpu="a100")))
    message = str(error.value)
    assert "Step 'train' of flow TrainFlow" in message and "'a100'" in message and "@resources" in message
    # Metaflow's rule: equal values that are not numbers pass, there is no larger one to pick. Both
    # decorators accept only numbers for these today, so the rule is checked where it is applied.
    assert jobs._larger_of("Step 'train' of flow TrainFlow", "gpu", "a100", "a100") == "a100"


@pytest.mark.parametrize(
    ("decorators", "named"),
    [
        ((batch(gpu=1.5),), "gpu must be a whole number"),
        ((resources(gpu="one"),), "gpu must be"),
        ((batch(cpu=0),), "cpu must be a number of vCPUs above 0"),
        ((batch(memory=2),), "memory must be a size in MiB of at least 4"),
        ((batch(shared_memory=0),), "shared_memory must be a size in MiB above 0"),
        ((batch(swappiness=101),), "from 0 to 100"),
        ((batch(use_tmpfs=True, tmpfs_path="tmp"),), "absolute path"),
        ((batch(log_options=["awslogs-group:/flows"]),), "without log_driver"),
        ((batch(log_driver="awslogs", log_options=["no-colon"]),), "'key:value'"),
        ((batch(aws_batch_tags={"aws:owner": "me"}),), "reserved prefix"),
        ((batch(aws_batch_tags={f"t{i}": "v" for i in range(44)}),), "keep at most 43"),
        ((batch(container_properties={"environment": {1, 2}}),), "plain JSON"),
    ],
)
def test_sizes_and_settings_batch_cannot_use_are_refused_with_the_step_named(decorators, named):
    with pytest.raises(BatchJobSpecError) as error:
        settings_for(train_step(*decorators))
    assert "Step 'train' of flow TrainFlow" in str(error.value)
    assert named in str(error.value)


@pytest.mark.parametrize(
    ("decorators", "gib"),
    [
        # As in Metaflow, @resources(disk) is not a Batch setting (EC2 jobs get the launch
        # template's disk; Batch refuses ephemeral storage there): a Kubernetes flow still runs.
        ((resources(disk=20480),), None),
        ((batch(ephemeral_storage=30), resources(disk=40960)), 30),
        ((batch(ephemeral_storage=20.5),), 21),  # Batch takes whole GiB: rounded up, never less
        ((resources(cpu=2),), None),
    ],
)
def test_only_batch_ephemeral_storage_sets_the_jobs_ephemeral_storage(decorators, gib):
    settings = settings_for(train_step(*decorators))
    assert settings.ephemeral_storage == gib
    storage = job_definition_document(settings)["containerProperties"].get("ephemeralStorage")
    assert storage == ({"sizeInGiB": gib} if gib else None)


@pytest.mark.parametrize(
    ("limit", "seconds"),
    [
        (timeout(seconds=10), 60),  # Batch refuses attempt timeouts under a minute
        (timeout(seconds=60), 60),
        (timeout(minutes=2, seconds=0.5), 121),
        (timeout(hours=1), 3600),
    ],
)
def test_timeout_becomes_the_attempt_timeout_of_at_least_a_minute(limit, seconds):
    assert settings_for(train_step(limit)).timeout_seconds == seconds


def test_settings_travel_as_plain_values_without_their_defaults_and_come_back_equal():
    """Guards a mapped Batch step's serialized arguments: JSON values only (tuples as lists),
    defaults left out, and the settings read back equal to those resolved at parse time."""
    plain = settings_for(TrainFlow.end)
    volumes = settings_for(
        train_step(batch(host_volumes=["/data:/mnt/data"], efs_volumes="fs-1", memory=8192))
    )

    assert set(plain.to_arguments()) == {
        "flow_name",
        "step_name",
        "queue",
        "job_definition",
        "image",
        "iam_role",
        "execution_role",
        "cpu",
        "memory",
        "gpu",
    }
    arguments = json.loads(json.dumps(volumes.to_arguments()))
    assert arguments["host_volumes"] == ["/data:/mnt/data"] and arguments["memory"] == "8192"
    assert BatchJobSettings.from_arguments(arguments) == volumes
    assert BatchJobSettings.from_arguments(plain.to_arguments()) == plain


def test_a_missing_queue_names_the_step_and_both_ways_to_set_one():
    with pytest.raises(BatchJobSpecError) as error:
        settings_for(TrainFlow.end, queue="")
    message = str(error.value)
    assert "Step 'train' of flow TrainFlow" in message
    assert "[flowspec] batch_job_queue" in message and "@batch(queue=...)" in message
    assert settings_for(train_step(batch(queue="own")), queue="").queue == "own"


def test_a_missing_image_and_job_definition_names_the_step_and_the_options():
    with pytest.raises(BatchJobSpecError) as error:
        settings_for(TrainFlow.end, image="")
    message = str(error.value)
    assert "Step 'train' of flow TrainFlow" in message
    assert "[flowspec] batch_image" in message and "batch_job_definition" in message
    assert "@batch(image=...)" in message


def test_a_configured_job_definition_is_used_as_it_is_unless_the_step_names_its_own_image():
    configured = settings_for(TrainFlow.end, job_definition="team-flows:3")
    assert configured.job_definition == "team-flows:3"
    own_image = settings_for(train_step(batch(image="repo/other:1")), job_definition="team-flows:3")
    assert (own_image.job_definition, own_image.image) == (None, "repo/other:1")
    own_definition = settings_for(
        train_step(batch(job_definition="gpu-flows")), job_definition="team-flows:3"
    )
    assert own_definition.job_definition == "gpu-flows"
    # sizes, timeout and tags travel with each job, so they combine with an existing definition
    sized = settings_for(
        train_step(batch(cpu=4, aws_batch_tags={"team": "ml"}), timeout(hours=1)),
        job_definition="team-flows:3",
    )
    assert (sized.job_definition, sized.cpu, sized.tags, sized.timeout_seconds) == (
        "team-flows:3",
        "4",
        {"team": "ml"},
        3600,
    )


def test_settings_an_existing_job_definition_cannot_carry_are_refused():
    with pytest.raises(BatchJobSpecError) as error:
        settings_for(
            train_step(batch(shared_memory=1024, host_volumes=["/data"])), job_definition="team-flows:3"
        )
    message = str(error.value)
    assert "Step 'train' of flow TrainFlow" in message and "'team-flows:3'" in message
    assert "shared_memory" in message and "host_volumes" in message and "@batch(image=...)" in message
    with pytest.raises(BatchJobSpecError, match="both @batch\\(job_definition=...\\) and @batch\\(image"):
        settings_for(train_step(batch(job_definition="gpu-flows", image="repo/x:1")))


# ---------------------------------------------------------------------- the job definition


def test_the_document_is_what_the_container_is():
    settings = settings_for(
        train_step(
            batch(
                trainium=2,
                shared_memory=1024,
                use_tmpfs=True,
                host_volumes=["/data:/mnt/data", "/scratch"],
                efs_volumes="fs-123",
                log_driver="awslogs",
                log_options=["awslogs-group:/flows"],
                execution_role="arn:aws:iam::1:role/exec",
                privileged=True,
            ),
            resources(memory=8192),
        ),
        iam_role="arn:aws:iam::1:role/flows",
    )
    document = job_definition_document(settings)
    assert document["type"] == "container" and document["propagateTags"] is True
    assert "tags" not in document and "jobDefinitionName" not in document
    container = document["containerProperties"]
    assert container["image"] == "repo/flowspec:1"
    assert container["jobRoleArn"] == "arn:aws:iam::1:role/flows"
    assert container["executionRoleArn"] == "arn:aws:iam::1:role/exec"
    assert container["command"] == ["echo", "flowspec"]
    assert container["privileged"] is True
    linux = container["linuxParameters"]
    assert linux["sharedMemorySize"] == 1024
    assert linux["tmpfs"] == [{"containerPath": "/metaflow_temp", "mountOptions": ["defaults"], "size": 4096}]
    assert [device["hostPath"] for device in linux["devices"]] == ["/dev/neuron0", "/dev/neuron1"]
    assert container["volumes"] == [
        {"host": {"sourcePath": "/data"}, "name": "_data"},
        {"host": {"sourcePath": "/scratch"}, "name": "_scratch"},
        {
            "efsVolumeConfiguration": {"fileSystemId": "fs-123", "transitEncryption": "ENABLED"},
            "name": "efs_fs-123",
        },
    ]
    assert [mount["containerPath"] for mount in container["mountPoints"]] == [
        "/mnt/data",
        "/scratch",
        "/mnt/fs-123",
    ]
    assert container["logConfiguration"] == {"logDriver": "awslogs", "options": {"awslogs-group": "/flows"}}


def test_the_definition_depends_on_what_the_container_is_not_on_sizes_or_tags():
    base = settings_for(train_step(batch(cpu=2, memory=8192)))
    other_sizes = settings_for(train_step(batch(cpu=8, memory=32768, gpu=1, aws_batch_tags={"team": "ml"})))
    assert job_definition_document(base) == job_definition_document(other_sizes)
    assert job_definition_name(job_definition_document(base)) == job_definition_name(
        job_definition_document(settings_for(train_step(batch(cpu=2, memory=8192))))
    )


@pytest.mark.parametrize(
    "change",
    [
        {"image": "repo/flowspec:2"},
        {"iam_role": "arn:aws:iam::1:role/other"},
        {"execution_role": "arn:aws:iam::1:role/exec"},
        {"shared_memory": 64},
        {"max_swap": 0},
        {"swappiness": 10},
        {"inferentia": 1},
        {"efa": 1},
        {"use_tmpfs": True, "tmpfs_size": 1024},
        {"host_volumes": ("/data",)},
        {"efs_volumes": ("fs-1",)},
        {"ephemeral_storage": 30},
        {"log_driver": "awslogs"},
        {"privileged": True},
        {"container_properties": {"readonlyRootFilesystem": True}},
    ],
)
def test_any_change_to_the_container_changes_the_definitions_name(change):
    base = settings_for(TrainFlow.end)
    changed = dataclasses.replace(base, **change)
    assert job_definition_name(job_definition_document(changed)) != job_definition_name(
        job_definition_document(base)
    )


def test_the_name_does_not_depend_on_the_order_dicts_were_written_in():
    first = train_step(
        batch(container_properties={"environment": [{"name": "A", "value": "1"}], "user": "ml"})
    )
    second = train_step(
        batch(container_properties={"user": "ml", "environment": [{"name": "A", "value": "1"}]})
    )
    one, two = job_definition_document(settings_for(first)), job_definition_document(settings_for(second))
    assert json.dumps(one) == json.dumps(two)  # the document itself is in one order
    reordered = json.loads(json.dumps(one))
    reordered["containerProperties"] = dict(reversed(list(reordered["containerProperties"].items())))
    reordered = dict(reversed(list(reordered.items())))
    assert job_definition_name(reordered) == job_definition_name(one)
    name = job_definition_name(one)
    assert name.startswith("flowspec-") and VALID_NAME.match(name)


def test_container_properties_are_merged_over_the_container_dicts_key_by_key():
    settings = settings_for(
        train_step(
            batch(
                shared_memory=1024,
                inferentia=1,
                container_properties={
                    "linuxParameters": {"initProcessEnabled": True, "sharedMemorySize": 2048},
                    "command": ["python", "-V"],
                    "readonlyRootFilesystem": True,
                },
            )
        )
    )
    container = job_definition_document(settings)["containerProperties"]
    linux = container["linuxParameters"]
    assert linux["initProcessEnabled"] is True
    assert linux["sharedMemorySize"] == 2048  # the escape hatch has the last word
    assert linux["devices"][0]["hostPath"] == "/dev/neuron0"  # what it does not name is kept
    assert container["command"] == ["python", "-V"]  # a list replaces, it does not extend
    assert container["readonlyRootFilesystem"] is True
    assert container["image"] == "repo/flowspec:1"


# ---------------------------------------------------------------------- each job


def test_overrides_carry_the_command_the_environment_and_the_sizes():
    settings = settings_for(train_step(batch(cpu=2, memory=8192)))
    overrides = container_overrides(settings, command=["python", "-m", "x"], environment={"B": "2", "A": "1"})
    assert overrides == {
        "command": ["python", "-m", "x"],
        "environment": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
        "resourceRequirements": [{"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "8192"}],
    }
    with_gpu = container_overrides(dataclasses.replace(settings, gpu="2"), command=["x"], environment={})
    assert with_gpu["resourceRequirements"][-1] == {"type": "GPU", "value": "2"}


def test_overrides_over_batchs_limit_name_the_step_and_the_largest_variables():
    settings = settings_for(TrainFlow.end)
    environment = {f"SMALL_{i}": "x" * 10 for i in range(20)}
    fits = {**environment, "PROMPT": "p" * 6000}
    assert len(json.dumps(container_overrides(settings, command=["run"], environment=fits))) <= 8192
    with pytest.raises(BatchJobSpecError) as error:
        container_overrides(settings, command=["run"], environment={**environment, "PROMPT": "p" * 9000})
    message = str(error.value)
    assert "Step 'train' of flow TrainFlow" in message and "8192" in message
    assert re.search(r"take (\d+) characters", message).group(1) == str(
        len(
            json.dumps(
                {
                    "command": ["run"],
                    "environment": [
                        {"name": n, "value": v}
                        for n, v in sorted({**environment, "PROMPT": "p" * 9000}.items())
                    ],
                    "resourceRequirements": [
                        {"type": "VCPU", "value": "1"},
                        {"type": "MEMORY", "value": "4096"},
                    ],
                }
            )
        )
    )
    assert message.index("PROMPT") < message.index("SMALL_")


def test_job_names_are_readable_when_they_can_be():
    assert job_name("TrainFlow", "manual_1", "train", 3, 2) == "TrainFlow-manual_1-train-3-a2"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # Airflow run ids: characters Batch refuses become '_', so the originals are hashed in
        (("manual__2024-01-01T00:00:00+00:00",), ("manual__2024-01-01T00_00_00_00_00",)),
        (("r" * 200 + "1",), ("r" * 200 + "2",)),  # too long, differing only at the end
        (("x" * 300, "train", 3, 1), ("x" * 300, "train", 4, 1)),
        (("x" * 300, "train", 3, 1), ("x" * 300, "train", 3, 2)),
        (("run", "s" * 130, 3, 1), ("run", "s" * 130, 4, 1)),  # even the end is too long
    ],
)
def test_job_names_are_valid_and_never_shared_by_two_tasks(first, second):
    defaults = ("train", 3, 1)
    names = [job_name("TrainFlow", *parts, *defaults[len(parts) - 1 :]) for parts in (first, second)]
    for name in names:
        assert VALID_NAME.match(name), name
    assert names[0] != names[1]
    assert names[0] == job_name("TrainFlow", *first, *defaults[len(first) - 1 :])  # deterministic


def test_a_job_name_starts_with_a_letter_or_digit():
    name = job_name("_PrivateFlow", "run", "start", 1, 1)
    assert VALID_NAME.match(name) and "PrivateFlow" in name
    long_tail = job_name("TrainFlow", "run", "train", "t" * 200, 1)
    assert VALID_NAME.match(long_tail) and long_tail.endswith("t-a1")


def test_job_tags_identify_the_task_try_and_fit_batchs_rules():
    tags = job_tags(
        dag_id="TrainFlow",
        run_id="manual__2024-01-01T00:00:00+00:00",
        task_id="train",
        map_index=-1,
        try_number=2,
        flow_name="TrainFlow",
        step="train",
        extra={"team": "ml #1", "owner": "ana", "note": "é" * 300},
    )
    assert tags["flowspec:dag"] == "TrainFlow"
    assert tags["flowspec:run"] == "manual__2024-01-01T00:00:00+00:00"  # ':' and '+' are allowed
    assert (tags["flowspec:task"], tags["flowspec:map_index"], tags["flowspec:try"]) == ("train", "-1", "2")
    assert (tags["flowspec:flow"], tags["flowspec:step"]) == ("TrainFlow", "train")
    assert tags["team"] == "ml _1" and tags["owner"] == "ana"
    assert tags["note"] == "_" * 256
    allowed = re.compile(r"^[A-Za-z0-9 _.:/=+\-@]*$")
    assert all(allowed.match(key) and len(key) <= 128 for key in tags)
    assert all(allowed.match(value) and len(value) <= 256 for value in tags.values())


def test_job_tags_refuse_reserved_keys_and_too_many():
    common = dict(dag_id="d", run_id="r", task_id="t", map_index=0, try_number=1, flow_name="F", step="s")
    with pytest.raises(BatchJobSpecError, match="reserved prefix"):
        job_tags(**common, extra={"flowspec:run": "forged"})
    with pytest.raises(BatchJobSpecError, match="at most 43"):
        job_tags(**common, extra={f"t{i}": "v" for i in range(44)})
    assert len(job_tags(**common, extra={f"t{i}": "v" for i in range(43)})) == 50


def test_the_modules_import_without_airflow_or_boto3_and_leave_the_batch_decorator_alone():
    """A flow file loaded after the jobs module (as in the operator) still gets the decorator; the
    client layer loads without boto3 too (its callers hand it their clients)."""
    code = (
        "import sys; import airflow_flowspec.aws_batch.jobs, airflow_flowspec.aws_batch.client, "
        "airflow_flowspec.aws_batch.watch; from airflow_flowspec import batch; "
        "assert callable(batch) and batch.__name__ == 'batch', batch; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('airflow', 'boto3', 'botocore')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
