"""A step's AWS Batch job, assembled from its decorators and the ``[flowspec]`` options.

The split follows Batch's own: what a container *is* (image, roles, volumes, devices) goes in a job
definition, registered once per distinct content under a name derived from that content; what a
task *does* (its command, environment, vCPUs, memory, GPUs) goes in the container overrides of each
submitted job. So a new run, a new task or a new ``@resources`` value never registers a definition.

Sizes follow Metaflow's rule for ``@batch`` and ``@resources``: both may give cpu, memory, gpu or
shared memory, and the larger value wins, so a flow that runs on Metaflow asks Batch for the same.

Nothing here imports Airflow or calls AWS: :class:`~airflow_flowspec.aws_batch.client.BatchClient`
registers the definition this module describes and submits nothing itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from airflow_flowspec.decorators.base import step_decorators_of
from airflow_flowspec.errors import BatchJobSpecError

#: Batch's final job statuses.
FINISHED = ("SUCCEEDED", "FAILED")
#: Batch's limit on the serialised size of a job's container overrides (characters).
MAX_CONTAINER_OVERRIDES_CHARS = 8192
#: Batch's limits on job names and job definition names.
MAX_NAME_CHARS = 128
#: Batch's limits on tags.
MAX_TAGS = 50
MAX_TAG_KEY_CHARS = 128
MAX_TAG_VALUE_CHARS = 256
#: Batch refuses a job attempt timeout under a minute.
MIN_TIMEOUT_SECONDS = 60
#: Batch refuses less memory than this (MiB).
MIN_MEMORY_MIB = 4

#: What a step gets when neither ``@batch`` nor ``@resources`` says (Metaflow's defaults).
RESOURCE_DEFAULTS = {"cpu": "1", "gpu": "0", "memory": "4096"}
#: The keys ``@batch`` and ``@resources`` both know, where the larger value wins.
SHARED_RESOURCE_KEYS = ("cpu", "gpu", "memory", "shared_memory")

#: The job definition's own command and sizes are never used: every job's overrides replace them.
PLACEHOLDER_COMMAND = ["echo", "flowspec"]
PLACEHOLDER_RESOURCES = [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "4096"}]

#: Tag keys that identify a job's Airflow task, so a job can be found again after a worker crash.
JOB_TAG_KEYS = (
    "flowspec:dag",
    "flowspec:run",
    "flowspec:task",
    "flowspec:map_index",
    "flowspec:try",
    "flowspec:flow",
    "flowspec:step",
)
#: Tag key prefixes a flow may not use: AWS reserves ``aws:``, and ``flowspec:`` keys are ours.
RESERVED_TAG_PREFIXES = ("aws:", "flowspec:")
MAX_USER_TAGS = MAX_TAGS - len(JOB_TAG_KEYS)

_TAG_FORBIDDEN = re.compile(r"[^A-Za-z0-9 _.:/=+\-@]")
_NAME_FORBIDDEN = re.compile(r"[^A-Za-z0-9_]")
_RUN_NAME_FORBIDDEN = re.compile(r"[^A-Za-z0-9_-]")
_STARTS_WITH_LETTER_OR_DIGIT = re.compile(r"^[A-Za-z0-9]")


@dataclass(frozen=True)
class BatchJobSettings:
    """Everything needed to run one step on Batch, resolved from its decorators and the options.

    ``job_definition`` is an existing definition used as it is; when it is ``None`` one is
    registered from ``image`` and the settings below it. Sizes are Batch's strings: ``cpu`` as
    ``%g`` (Batch refuses ``2.0`` on EC2), ``memory`` in whole MiB, ``gpu`` a whole number.
    ``ephemeral_storage`` is in GiB and Batch honours it only on Fargate.
    """

    flow_name: str
    step_name: str
    queue: str
    job_definition: str | None
    image: str | None
    iam_role: str | None
    execution_role: str | None
    cpu: str
    memory: str
    gpu: str
    shared_memory: int | None = None
    max_swap: int | None = None
    swappiness: int | None = None
    inferentia: int = 0
    efa: int = 0
    use_tmpfs: bool = False
    tmpfs_size: int | None = None
    tmpfs_path: str = "/metaflow_temp"
    host_volumes: tuple[str, ...] = ()
    efs_volumes: tuple[str, ...] = ()
    ephemeral_storage: int | None = None
    log_driver: str | None = None
    log_options: dict[str, str] = field(default_factory=dict)
    privileged: bool = False
    container_properties: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    timeout_seconds: int | None = None

    def to_arguments(self) -> dict[str, Any]:
        """The settings as plain JSON values, defaults left out: a mapped task's arguments are
        serialized with the DAG every time it is parsed. :meth:`from_arguments` reads them back."""
        arguments: dict[str, Any] = {}
        for setting in fields(self):
            value = getattr(self, setting.name)
            if setting.name not in _SETTINGS_DEFAULTS or value != _SETTINGS_DEFAULTS[setting.name]:
                arguments[setting.name] = list(value) if isinstance(value, tuple) else value
        return arguments

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> BatchJobSettings:
        """The settings :meth:`to_arguments` gave (after a JSON round trip, tuples come back as
        lists)."""
        values = dict(arguments)
        for name in ("host_volumes", "efs_volumes"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


def _default_of(setting: Field[Any]) -> Any:
    return setting.default if setting.default is not MISSING else setting.default_factory()  # type: ignore[misc]


#: The fields of :class:`BatchJobSettings` that have a default, and that default.
_SETTINGS_DEFAULTS: dict[str, Any] = {
    setting.name: _default_of(setting)
    for setting in fields(BatchJobSettings)
    if setting.default is not MISSING or setting.default_factory is not MISSING
}


# ---------------------------------------------------------------------- settings of a step


def step_job_settings(
    step_func: Callable[..., Any],
    *,
    flow_name: str,
    step_name: str,
    queue: str,
    job_definition: str,
    image: str,
    iam_role: str,
) -> BatchJobSettings:
    """The Batch settings of one step: its ``@batch``, ``@resources`` and ``@timeout`` over the
    ``[flowspec]`` options given as arguments (an empty string means the option is unset).

    A step's ``@batch`` value wins over the option. A step's ``@batch(image=...)`` also wins over a
    configured ``batch_job_definition``: the step asked for its own container. ``@resources(disk=...)``
    is not applied, as in Metaflow: on EC2 a job's disk is the compute environment's launch
    template's, and ``@batch(ephemeral_storage=GiB)`` (Fargate only) is the explicit way; a flow
    written for Kubernetes with ``disk`` still runs on Batch. ``@timeout`` becomes the job's
    attempt timeout, at least a minute because Batch refuses less.

    Three questions, each answered by its own function: where the job runs (queue, definition,
    image, roles), how big it is, and what its container's Linux parameters are.

    Raises :class:`BatchJobSpecError` naming the flow, the step and the fix when the job cannot be
    assembled: no queue, no image nor job definition, conflicting or unusable sizes, settings an
    existing job definition cannot carry.
    """
    where = f"Step '{step_name}' of flow {flow_name}"
    decorators = step_decorators_of(step_func)
    batch_deco = decorators.get("batch")
    resources_deco = decorators.get("resources")
    timeout_deco = decorators.get("timeout")
    batch_args: dict[str, Any] = dict(batch_deco.attributes) if batch_deco is not None else {}
    resources_args: dict[str, Any] | None = (
        dict(resources_deco.attributes) if resources_deco is not None else None
    )

    placement = _placement(
        where, batch_args, queue=queue, job_definition=job_definition, image=image, iam_role=iam_role
    )
    sizes = _sizes(where, batch_args, resources_args)
    linux = _linux_parameters(where, batch_args, memory=sizes["memory"])
    log_driver = batch_args.get("log_driver") or None
    log_options = _log_options(where, batch_args.get("log_options"))
    if log_options and not log_driver:
        raise BatchJobSpecError(
            f"{where} has @batch(log_options=...) without log_driver: Batch needs the driver the "
            f"options are for, e.g. @batch(log_driver='awslogs', log_options=[...])."
        )

    settings = BatchJobSettings(
        flow_name=flow_name,
        step_name=step_name,
        **placement.arguments,
        **sizes,
        **linux,
        host_volumes=_volume_list(where, "host_volumes", batch_args.get("host_volumes")),
        efs_volumes=_volume_list(where, "efs_volumes", batch_args.get("efs_volumes")),
        ephemeral_storage=_ephemeral_storage(where, batch_args, resources_args),
        log_driver=log_driver,
        log_options=log_options,
        privileged=bool(batch_args.get("privileged")),
        container_properties=_container_properties(where, batch_args.get("container_properties")),
        tags=_user_tags(where, batch_args),
        timeout_seconds=(
            max(MIN_TIMEOUT_SECONDS, math.ceil(timeout_deco.total_seconds))  # type: ignore[attr-defined]
            if timeout_deco is not None
            else None
        ),
    )
    if placement.definition_origin:
        _refuse_settings_a_definition_cannot_take(
            where,
            settings,
            placement.arguments["job_definition"],
            placement.definition_origin,
            step_iam_role=batch_args.get("iam_role"),
        )
    return settings


@dataclass(frozen=True)
class _Placement:
    """Where a step's job runs: the settings' queue, definition, image and roles, and where an
    existing definition came from ("" when one is registered)."""

    arguments: dict[str, Any]
    definition_origin: str


def _placement(
    where: str, batch_args: Mapping[str, Any], *, queue: str, job_definition: str, image: str, iam_role: str
) -> _Placement:
    resolved_queue = batch_args.get("queue") or queue
    if not resolved_queue:
        raise BatchJobSpecError(
            f"{where} runs on AWS Batch, but no job queue is set. Set [flowspec] batch_job_queue in "
            f"airflow.cfg (or AIRFLOW__FLOWSPEC__BATCH_JOB_QUEUE), or give the step "
            f"@batch(queue=...)."
        )

    if batch_args.get("job_definition") and batch_args.get("image"):
        raise BatchJobSpecError(
            f"{where} has both @batch(job_definition=...) and @batch(image=...): an existing job "
            f"definition already names its image. Keep one of them."
        )
    resolved_image = batch_args.get("image") or image or None
    if batch_args.get("job_definition"):
        resolved_definition, definition_origin = batch_args["job_definition"], "@batch(job_definition=...)"
    elif job_definition and not batch_args.get("image"):
        resolved_definition, definition_origin = job_definition, "[flowspec] batch_job_definition"
    else:
        resolved_definition, definition_origin = None, ""
    if resolved_definition is None and not resolved_image:
        raise BatchJobSpecError(
            f"{where} runs on AWS Batch, but neither a job definition nor a container image is set. "
            f"Set [flowspec] batch_image (an image with Python, boto3, cloudpickle and "
            f"airflow-flowspec) or [flowspec] batch_job_definition (an existing definition) in "
            f"airflow.cfg, or give the step @batch(image=...)."
        )
    return _Placement(
        arguments={
            "queue": resolved_queue,
            "job_definition": resolved_definition,
            "image": resolved_image,
            "iam_role": batch_args.get("iam_role") or iam_role or None,
            "execution_role": batch_args.get("execution_role") or None,
        },
        definition_origin=definition_origin,
    )


def _sizes(
    where: str, batch_args: Mapping[str, Any], resources_args: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The job's vCPUs, memory, GPUs and shared memory, checked and in Batch's units."""
    sizes = _resolve_sizes(where, batch_args, resources_args)
    cpu = _cpu(where, sizes["cpu"])
    memory = _memory(where, sizes["memory"])
    gpu = _whole_number(where, "gpu", sizes["gpu"], "the number of GPUs, e.g. gpu=1")
    shared_memory = sizes.get("shared_memory")
    if shared_memory is not None:
        shared_memory = _whole_number(where, "shared_memory", shared_memory, "a size in MiB above 0")
        if shared_memory <= 0:
            raise BatchJobSpecError(
                f"{where}: shared_memory must be a size in MiB above 0, got {sizes['shared_memory']!r}."
            )
    return {"cpu": cpu, "memory": memory, "gpu": str(gpu), "shared_memory": shared_memory}


def _linux_parameters(where: str, batch_args: Mapping[str, Any], *, memory: str) -> dict[str, Any]:
    """Swap, the tmpfs mount and the Inferentia/EFA devices of the job's container."""
    swappiness = _optional_whole_number(where, "swappiness", batch_args.get("swappiness"))
    if swappiness is not None and swappiness > 100:
        raise BatchJobSpecError(
            f"{where}: @batch(swappiness=...) must be a whole number from 0 to 100, got {swappiness}."
        )
    accelerators = batch_args.get("trainium") or batch_args.get("inferentia")
    use_tmpfs = bool(batch_args.get("use_tmpfs")) or bool(batch_args.get("tmpfs_size"))
    tmpfs_path = batch_args.get("tmpfs_path") or "/metaflow_temp"
    if use_tmpfs and not str(tmpfs_path).startswith("/"):
        raise BatchJobSpecError(
            f"{where}: @batch(tmpfs_path=...) must be an absolute path, e.g. '/metaflow_temp', "
            f"got {tmpfs_path!r}."
        )
    tmpfs_size = _optional_whole_number(where, "tmpfs_size", batch_args.get("tmpfs_size") or None)
    if use_tmpfs and tmpfs_size is None:
        tmpfs_size = int(memory) // 2  # Docker's default for a tmpfs mount: half the memory
    return {
        "max_swap": _optional_whole_number(where, "max_swap", batch_args.get("max_swap")),
        "swappiness": swappiness,
        "inferentia": _optional_whole_number(where, "inferentia", accelerators) or 0,
        "efa": _optional_whole_number(where, "efa", batch_args.get("efa")) or 0,
        "use_tmpfs": use_tmpfs,
        "tmpfs_size": tmpfs_size,
        "tmpfs_path": tmpfs_path,
    }


def _resolve_sizes(
    where: str, batch_args: Mapping[str, Any], resources_args: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Metaflow's ``compute_resource_attributes``: with ``@resources``, each size either decorator
    gives takes part (its defaults too) and the larger wins; without it, ``@batch`` over the
    defaults."""
    sizes: dict[str, Any] = dict(RESOURCE_DEFAULTS)
    if resources_args is None:
        for key in SHARED_RESOURCE_KEYS:
            if batch_args.get(key) is not None:
                sizes[key] = batch_args[key] or "0"
        return sizes
    for key in SHARED_RESOURCE_KEYS:
        merged = _larger_of(where, key, batch_args.get(key), resources_args.get(key))
        if merged is not None:
            sizes[key] = merged
    return sizes


def _larger_of(where: str, key: str, batch_value: Any, resources_value: Any) -> Any:
    """The larger of two sizes (an empty value counts as 0); values that are not numbers must be
    equal, since there is no larger one to pick."""
    if batch_value is None and resources_value is None:
        return None
    if batch_value is None:
        return resources_value or "0"
    if resources_value is None:
        return batch_value or "0"
    try:
        larger = max(float(batch_value or 0), float(resources_value or 0))
    except (TypeError, ValueError):
        if batch_value != resources_value:
            raise BatchJobSpecError(
                f"{where} asks for {key}={batch_value!r} in @batch and {key}={resources_value!r} in "
                f"@resources, which cannot be compared. Give the same value in both, or give it once."
            ) from None
        return batch_value
    return larger


def _number(where: str, key: str, value: Any, accepted: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not 0 <= number < math.inf:
        raise BatchJobSpecError(f"{where}: {key} must be {accepted}, got {value!r}.")
    return number


def _cpu(where: str, value: Any) -> str:
    number = _number(where, "cpu", value, "a number of vCPUs above 0, e.g. cpu=2")
    if number <= 0:
        raise BatchJobSpecError(f"{where}: cpu must be a number of vCPUs above 0, e.g. cpu=2, got {value!r}.")
    return f"{number:g}"


def _memory(where: str, value: Any) -> str:
    accepted = f"a size in MiB of at least {MIN_MEMORY_MIB}, e.g. memory=8192"
    number = _number(where, "memory", value, accepted)
    if number < MIN_MEMORY_MIB:
        raise BatchJobSpecError(f"{where}: memory must be {accepted}, got {value!r}.")
    return str(int(number))


def _whole_number(where: str, key: str, value: Any, accepted: str) -> int:
    number = _number(where, key, value, accepted)
    if not number.is_integer():
        raise BatchJobSpecError(f"{where}: {key} must be a whole number ({accepted}), got {value!r}.")
    return int(number)


def _optional_whole_number(where: str, key: str, value: Any) -> int | None:
    if value is None:
        return None
    return _whole_number(where, f"@batch({key}=...)", value, "0 or more")


def _ephemeral_storage(
    where: str, batch_args: Mapping[str, Any], resources_args: Mapping[str, Any] | None
) -> int | None:
    if batch_args.get("ephemeral_storage") is None:
        return None
    gib = _number(where, "@batch(ephemeral_storage=...)", batch_args["ephemeral_storage"], "GiB")
    return math.ceil(gib) or None


def _log_options(where: str, options: Any) -> dict[str, str]:
    """Metaflow's form (``["key:value", ...]``, or one such string) or a dict."""
    if not options:
        return {}
    if isinstance(options, Mapping):
        return {str(key): str(value) for key, value in options.items()}
    if isinstance(options, str):
        options = [options]
    parsed: dict[str, str] = {}
    for option in options:
        if not isinstance(option, str) or ":" not in option:
            raise BatchJobSpecError(
                f"{where}: each @batch(log_options=...) entry must look like 'key:value', e.g. "
                f"'awslogs-group:/aws/batch/job', got {option!r}."
            )
        key, value = option.split(":", 1)
        parsed[key] = value
    return parsed


def _volume_list(where: str, key: str, volumes: Any) -> tuple[str, ...]:
    if not volumes:
        return ()
    if isinstance(volumes, str):
        volumes = [volumes]
    if not isinstance(volumes, (list, tuple)) or not all(isinstance(v, str) and v for v in volumes):
        raise BatchJobSpecError(
            f"{where}: @batch({key}=...) must be a path or a list of them "
            f"('source' or 'source:container_path'), got {volumes!r}."
        )
    return tuple(volumes)


def _container_properties(where: str, properties: Any) -> dict[str, Any]:
    """A copy that is plain JSON, so it hashes the same however it was written."""
    if not properties:
        return {}
    try:
        return json.loads(json.dumps(properties))
    except (TypeError, ValueError) as error:
        raise BatchJobSpecError(
            f"{where}: @batch(container_properties=...) must be plain JSON (dicts, lists, strings, "
            f"numbers, booleans), as AWS Batch takes it: {error}."
        ) from None


def _user_tags(where: str, batch_args: Mapping[str, Any]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for key in ("tags", "aws_batch_tags"):  # Metaflow's name wins
        given = batch_args.get(key)
        if not given:
            continue
        if isinstance(given, Mapping):
            tags.update({str(k): str(v) for k, v in given.items()})
            continue
        for item in given:
            if not isinstance(item, str) or "=" not in item:
                raise BatchJobSpecError(
                    f"{where}: @batch({key}=...) must be a dict of tag names to values, or a list of "
                    f"'name=value' strings, got {item!r} in it."
                )
            name, value = item.split("=", 1)
            tags[name] = value
    _check_user_tags(where, tags)
    return tags


def _check_user_tags(where: str, tags: Mapping[str, str]) -> None:
    for key in tags:
        if not str(key).strip():
            raise BatchJobSpecError(f"{where}: an @batch tag has an empty name; give every tag a name.")
        if str(key).lower().startswith(RESERVED_TAG_PREFIXES):
            raise BatchJobSpecError(
                f"{where}: @batch tag {key!r} starts with a reserved prefix ('aws:' is AWS's, "
                f"'flowspec:' is ours); rename it."
            )
    if len(tags) > MAX_USER_TAGS:
        raise BatchJobSpecError(
            f"{where} has {len(tags)} @batch tags; AWS Batch allows {MAX_TAGS} per job and "
            f"{len(JOB_TAG_KEYS)} of them identify the task, so keep at most {MAX_USER_TAGS}."
        )


def _refuse_settings_a_definition_cannot_take(
    where: str, settings: BatchJobSettings, definition: str, origin: str, *, step_iam_role: str | None
) -> None:
    """An existing definition is used as it is, and overrides cannot carry these: refusing beats
    running the step without what it asked for."""
    unusable = [
        label
        for label, asked in (
            ("@batch(iam_role=...)", bool(step_iam_role)),
            ("@batch(execution_role=...)", bool(settings.execution_role)),
            ("shared_memory (@batch or @resources)", settings.shared_memory is not None),
            ("@batch(max_swap=...)", settings.max_swap is not None),
            ("@batch(swappiness=...)", settings.swappiness is not None),
            ("@batch(inferentia=...)", bool(settings.inferentia)),
            ("@batch(efa=...)", bool(settings.efa)),
            ("@batch(use_tmpfs=..., tmpfs_size=...)", settings.use_tmpfs),
            ("@batch(host_volumes=...)", bool(settings.host_volumes)),
            ("@batch(efs_volumes=...)", bool(settings.efs_volumes)),
            (
                "ephemeral storage (@batch(ephemeral_storage=...), @resources(disk=...))",
                bool(settings.ephemeral_storage),
            ),
            ("@batch(log_driver=...)", bool(settings.log_driver)),
            ("@batch(privileged=True)", settings.privileged),
            ("@batch(container_properties=...)", bool(settings.container_properties)),
        )
        if asked
    ]
    if unusable:
        raise BatchJobSpecError(
            f"{where} runs with the existing job definition {definition!r} (from {origin}), which is "
            f"used as it is, so it cannot also take {', '.join(unusable)}. Remove those, or give the "
            f"step @batch(image=...) so a job definition is registered with them."
        )


# ---------------------------------------------------------------------- the job definition


def job_definition_document(settings: BatchJobSettings) -> dict[str, Any]:
    """The arguments of ``register_job_definition`` but its name: what the container is.

    Shapes follow Metaflow's (``/dev/neuron{i}`` devices, host and EFS volumes, tmpfs), then
    ``container_properties`` is merged over the container properties, dicts key by key. The command
    and sizes are placeholders that every job's overrides replace, so they never make a new
    definition. Tags are left out: they belong to each job, and in the definition they would
    register one per tag value.
    """
    container: dict[str, Any] = {
        "image": settings.image,
        "command": list(PLACEHOLDER_COMMAND),
        "resourceRequirements": [dict(requirement) for requirement in PLACEHOLDER_RESOURCES],
    }
    if settings.iam_role:
        container["jobRoleArn"] = settings.iam_role
    if settings.execution_role:
        container["executionRoleArn"] = settings.execution_role
    if settings.privileged:
        container["privileged"] = True

    linux: dict[str, Any] = {}
    if settings.shared_memory is not None:
        linux["sharedMemorySize"] = settings.shared_memory
    if settings.max_swap is not None:
        linux["maxSwap"] = settings.max_swap
    if settings.swappiness is not None:
        linux["swappiness"] = settings.swappiness
    if settings.use_tmpfs:
        linux["tmpfs"] = [
            {"containerPath": settings.tmpfs_path, "size": settings.tmpfs_size, "mountOptions": ["defaults"]}
        ]
    devices = [
        {"containerPath": f"/dev/neuron{i}", "hostPath": f"/dev/neuron{i}", "permissions": ["READ", "WRITE"]}
        for i in range(settings.inferentia)
    ]
    devices += [{"hostPath": f"/dev/infiniband/uverbs{i}"} for i in range(settings.efa)]
    if devices:
        linux["devices"] = devices
    if linux:
        container["linuxParameters"] = linux

    volumes: list[dict[str, Any]] = []
    mount_points: list[dict[str, Any]] = []
    for host_volume in settings.host_volumes:
        source, _, container_path = host_volume.partition(":")
        name = source.replace("/", "_").replace(".", "_")
        volumes.append({"name": name, "host": {"sourcePath": source}})
        mount_points.append({"sourceVolume": name, "containerPath": container_path or source})
    for efs_volume in settings.efs_volumes:
        file_system, _, container_path = efs_volume.partition(":")
        name = f"efs_{file_system}"
        volumes.append(
            {
                "name": name,
                "efsVolumeConfiguration": {"fileSystemId": file_system, "transitEncryption": "ENABLED"},
            }
        )
        mount_points.append({"sourceVolume": name, "containerPath": container_path or f"/mnt/{file_system}"})
    if volumes:
        container["volumes"] = volumes
        container["mountPoints"] = mount_points

    if settings.log_driver:
        container["logConfiguration"] = {"logDriver": settings.log_driver}
        if settings.log_options:
            container["logConfiguration"]["options"] = dict(settings.log_options)
    if settings.ephemeral_storage:
        container["ephemeralStorage"] = {"sizeInGiB": settings.ephemeral_storage}

    container = _deep_merge(container, settings.container_properties)
    return _sorted_keys({"type": "container", "containerProperties": container, "propagateTags": True})


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: dicts merge key by key, anything else (lists too) replaces."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _sorted_keys(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_sorted_keys(item) for item in value]
    return value


def job_definition_name(document: Mapping[str, Any]) -> str:
    """A name that is a function of the content: equal documents share one definition however
    their dicts were ordered, and any change makes a new one."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return ("flowspec-" + hashlib.sha224(canonical.encode("utf-8")).hexdigest())[:MAX_NAME_CHARS]


# ---------------------------------------------------------------------- one job


def container_overrides(
    settings: BatchJobSettings, *, command: list[str], environment: Mapping[str, str]
) -> dict[str, Any]:
    """A job's ``containerOverrides``: its command, environment and sizes.

    Batch refuses overrides over ``MAX_CONTAINER_OVERRIDES_CHARS`` once serialised. Manifests and
    code travel by datastore key, so only a large ``@environment`` reaches that; the error names
    the largest variables.
    """
    requirements = [{"type": "VCPU", "value": settings.cpu}, {"type": "MEMORY", "value": settings.memory}]
    if int(settings.gpu) > 0:
        requirements.append({"type": "GPU", "value": settings.gpu})
    overrides = {
        "command": [str(part) for part in command],
        "environment": [{"name": name, "value": str(environment[name])} for name in sorted(environment)],
        "resourceRequirements": requirements,
    }
    size = len(json.dumps(overrides))
    if size > MAX_CONTAINER_OVERRIDES_CHARS:
        largest = sorted(environment, key=lambda name: len(name) + len(str(environment[name])), reverse=True)
        listed = ", ".join(
            f"{name} ({len(name) + len(str(environment[name]))} characters)" for name in largest[:3]
        )
        raise BatchJobSpecError(
            f"Step '{settings.step_name}' of flow {settings.flow_name} cannot start on AWS Batch: its "
            f"command and environment take {size} characters, over Batch's limit of "
            f"{MAX_CONTAINER_OVERRIDES_CHARS}. The largest environment variables are {listed or 'none'}. "
            f"Pass large values as artifacts or parameters instead of @environment variables."
        )
    return overrides


def job_name(flow_name: str, run_id: str, step: str, task_id: str | int, attempt: int) -> str:
    """A readable job name, e.g. ``TrainFlow-manual_1-train-3-a2``, that no other task shares.

    Batch allows ``[A-Za-z0-9_-]``, 128 characters, a letter or digit first. When the parts had to
    be changed to fit (replaced characters, a long run id), a hash of the original parts goes in
    and the end (step, task, attempt) is kept whole: two tasks then still never share a name.
    """
    raw = [str(flow_name), str(run_id), str(step), str(task_id), str(attempt)]
    flow_part = _NAME_FORBIDDEN.sub("_", raw[0])
    run_part = _RUN_NAME_FORBIDDEN.sub("_", raw[1])
    step_part = _NAME_FORBIDDEN.sub("_", raw[2])
    task_part = _NAME_FORBIDDEN.sub("_", raw[3])
    tail = f"{step_part}-{task_part}-a{_NAME_FORBIDDEN.sub('_', raw[4])}"
    plain = f"{flow_part}-{run_part}-{tail}"
    # Only the run id may hold '-', so the parts of an unchanged name can be told apart.
    unchanged = [flow_part, run_part, step_part, task_part] == raw[:4] and raw[4].isdigit()
    if (
        unchanged
        and all(raw[:4])
        and len(plain) <= MAX_NAME_CHARS
        and _STARTS_WITH_LETTER_OR_DIGIT.match(plain)
    ):
        return plain
    digest = hashlib.sha256("\x1f".join(raw).encode("utf-8")).hexdigest()[:12]
    head = f"{flow_part}-{run_part}".lstrip("_-")
    room = MAX_NAME_CHARS - len(digest) - len(tail) - 2
    if room > 0 and head:
        return f"{head[:room]}-{digest}-{tail}"
    return f"{digest}-{tail[-(MAX_NAME_CHARS - len(digest) - 1) :]}"


def job_tags(
    *,
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: int,
    try_number: int,
    flow_name: str,
    step: str,
    extra: Mapping[str, str],
) -> dict[str, str]:
    """The tags of a step's job: the user's, and ours that tell which Airflow task try it runs,
    so that a worker that crashed can find its job again instead of submitting another.

    Keys and values are made to fit Batch's tag rules the same way every time (a character Batch
    refuses becomes ``_``), so the tags computed again match the ones the job was given.
    """
    where = f"Step '{step}' of flow {flow_name}"
    _check_user_tags(where, extra)
    ours = {
        "flowspec:dag": dag_id,
        "flowspec:run": run_id,
        "flowspec:task": task_id,
        "flowspec:map_index": map_index,
        "flowspec:try": try_number,
        "flowspec:flow": flow_name,
        "flowspec:step": step,
    }
    tags: dict[str, str] = {}
    for key, value in [*extra.items(), *ours.items()]:
        tags[_TAG_FORBIDDEN.sub("_", str(key))[:MAX_TAG_KEY_CHARS]] = _TAG_FORBIDDEN.sub("_", str(value))[
            :MAX_TAG_VALUE_CHARS
        ]
    return tags
