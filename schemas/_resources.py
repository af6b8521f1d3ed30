"""Sedna's resources: Dataset, Model and FederatedLearningJob (``apiVersion: sedna.io/v1alpha1``).

The seed page's YAML parses unchanged. Workers may be written the seed page's way (``nodeName`` and
``workerSpec`` with scriptDir, scriptBootFile, frameworkType, frameworkVersion and a key/value
``parameters`` list) or the CRD's way (a pod ``template`` whose container env holds the parameters);
`WorkerBase.effective()` turns both into one `EffectiveWorker`.

Unknown fields under ``spec`` are errors (as with ``kubectl --validate=strict``), so a typo such as
``nodename`` is reported instead of silently ignored. ``metadata`` and pod templates may carry
anything Kubernetes puts there.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from schemas._parameters import MAX_PARAMETERS, MAX_TRAINING_WORKERS
from schemas._topics import check_name

API_VERSION = "sedna.io/v1alpha1"
Name = Annotated[str, AfterValidator(check_name)]
NodeName = Annotated[str, AfterValidator(lambda v: check_name(v, "node name"))]


class _Spec(BaseModel):
    """Strict camelCase model: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class _Loose(BaseModel):
    """For Kubernetes structures that carry many fields we do not use."""

    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True, frozen=True)


class ObjectMeta(_Loose):
    name: Name
    namespace: Name = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


# -- Dataset and Model -------------------------------------------------------------------------


class DatasetSpec(_Spec):
    url: str = Field(min_length=1)
    format: Literal["txt"]  # Sedna also knows csv; this system reads Sedna's txt label files
    node_name: NodeName
    credential_name: str | None = None


class ModelSpec(_Spec):
    url: str = Field(min_length=1)
    # ckpt: TensorFlow checkpoint; keras: a .keras file; h5: Keras HDF5 weights;
    # savedmodel / pb: a SavedModel directory (Sedna's README says "pb" for it).
    format: Literal["ckpt", "keras", "h5", "savedmodel", "pb"]
    device_soc_versions: list[str] | None = Field(default=None, alias="device_soc_versions")
    credential_name: str | None = None


class Dataset(_Spec):
    api_version: Literal["sedna.io/v1alpha1"]
    kind: Literal["Dataset"]
    metadata: ObjectMeta
    spec: DatasetSpec


class Model(_Spec):
    api_version: Literal["sedna.io/v1alpha1"]
    kind: Literal["Model"]
    metadata: ObjectMeta
    spec: ModelSpec


# -- FederatedLearningJob ----------------------------------------------------------------------


class ResourceRef(_Spec):
    name: Name


class Parameter(_Spec):
    key: str = Field(min_length=1)
    # The CRD types values as strings; YAML numbers (value: 3) are accepted and kept as written.
    value: str

    @model_validator(mode="before")
    @classmethod
    def _stringify(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and isinstance(data.get("value"), (int, float))
            and not isinstance(data.get("value"), bool)
        ):
            return {**data, "value": str(data["value"])}
        return data


class WorkerSpec(_Spec):
    script_dir: str = Field(min_length=1)
    script_boot_file: str = Field(min_length=1)
    framework_type: str = "tensorflow"
    framework_version: str | None = None
    parameters: list[Parameter] = Field(default_factory=list, max_length=MAX_PARAMETERS)


class EnvVar(_Loose):
    name: str
    value: str | None = None


class Container(_Loose):
    name: str | None = None
    image: str | None = None
    working_dir: str | None = None
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list, max_length=MAX_PARAMETERS)


class PodSpec(_Loose):
    node_name: NodeName | None = None
    containers: list[Container] = Field(default_factory=list)


class PodTemplate(_Loose):
    spec: PodSpec


class EffectiveWorker(BaseModel):
    """A worker as the system runs it, whichever way the YAML wrote it."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel)

    node_name: str
    script_dir: str
    script_boot_file: str
    framework_type: str
    framework_version: str | None
    parameters: dict[str, str]


class WorkerBase(_Spec):
    node_name: NodeName | None = None
    worker_spec: WorkerSpec | None = None
    template: PodTemplate | None = None

    @model_validator(mode="after")
    def _one_way(self) -> WorkerBase:
        if self.worker_spec is None and self.template is None:
            raise ValueError("needs workerSpec (scriptDir, scriptBootFile, ...) or a pod template")
        if self.effective_node() is None:
            raise ValueError("needs nodeName (or template.spec.nodeName)")
        if self.template is not None and self.worker_spec is None:
            _script_from_template(self.template)  # raises with a clear message
        return self

    def effective_node(self) -> str | None:
        if self.node_name:
            return self.node_name
        return self.template.spec.node_name if self.template else None

    def effective(self) -> EffectiveWorker:
        node = self.effective_node()
        assert node is not None  # guaranteed by _one_way
        if self.worker_spec is not None:
            ws = self.worker_spec
            return EffectiveWorker(
                node_name=node,
                script_dir=ws.script_dir,
                script_boot_file=ws.script_boot_file,
                framework_type=ws.framework_type,
                framework_version=ws.framework_version,
                parameters={p.key: p.value for p in ws.parameters},
            )
        assert self.template is not None
        script_dir, boot = _script_from_template(self.template)
        container = self.template.spec.containers[0]
        return EffectiveWorker(
            node_name=node,
            script_dir=script_dir,
            script_boot_file=boot,
            framework_type="tensorflow",
            framework_version=None,
            parameters={e.name: e.value or "" for e in container.env},
        )


def _script_from_template(template: PodTemplate) -> tuple[str, str]:
    """A pod template runs a script from its image; here it must name the script to run instead."""
    if not template.spec.containers:
        raise ValueError("template.spec.containers must list one container")
    c = template.spec.containers[0]
    scripts = [a for a in (*c.command, *c.args) if a.endswith(".py")]
    if not scripts:
        raise ValueError(
            "template.spec.containers[0] must name its Python script in command or args "
            "(images are not pulled here: scripts run from the node's scriptDir); or use workerSpec"
        )
    script = scripts[0]
    if "/" in script:
        directory, boot = script.rsplit("/", 1)
        return directory or "/", boot
    return c.working_dir or "/code", script


class AggregationWorker(WorkerBase):
    model: ResourceRef


class TrainingWorker(WorkerBase):
    dataset: ResourceRef


class S3Transmitter(_Spec):
    agg_data_path: str
    credential_name: str | None = None


class Transmitter(_Spec):
    ws: dict[str, Any] | None = None
    s3: S3Transmitter | None = None


class FederatedLearningJobSpec(_Spec):
    aggregation_worker: AggregationWorker
    training_workers: list[TrainingWorker] = Field(min_length=1, max_length=MAX_TRAINING_WORKERS)
    pretrained_model: ResourceRef | None = None
    transmitter: Transmitter | None = None

    @model_validator(mode="after")
    def _distinct_nodes(self) -> FederatedLearningJobSpec:
        seen: dict[str, int] = {}
        for i, w in enumerate(self.training_workers):
            node = w.effective_node()
            if node in seen:
                raise ValueError(
                    f"trainingWorkers[{i}] and trainingWorkers[{seen[node]}] both run on node {node!r}; "
                    "each edge node may hold one training worker of a job"
                )
            if node is not None:
                seen[node] = i
        return self


class FederatedLearningJob(_Spec):
    api_version: Literal["sedna.io/v1alpha1"]
    kind: Literal["FederatedLearningJob"]
    metadata: ObjectMeta
    spec: FederatedLearningJobSpec

    def spec_hash(self) -> str:
        """A digest of the spec: equal hashes mean the same job was submitted again."""
        canonical = json.dumps(self.spec.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


Resource = Dataset | Model | FederatedLearningJob
