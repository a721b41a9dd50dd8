"""The labelsieve DAG as a Kubeflow pipeline: the stages of `labelsieve.stages.STAGES`, wired as dvc.yaml.

Each stage input is the output artifact of the stage whose registered output directory is that input's
default path, so the DAG here and the one `dvc repro` runs are the same graph.

Cluster settings (ignored by kfp's local runner):
- GPU: every stage that runs a network requests `accelerator` with a toleration for GPU-node taints, and
  an optional node selector: one GPU, and with `gpus` N > 1 the data-parallel stages (`DATA_PARALLEL`:
  those that train, plus co_divide and purify) N GPUs in one pod, where they run as `torchrun
  --standalone --nproc_per_node N -m labelsieve.cli <stage> ...` (components `TORCHRUN_COMPONENTS`,
  labelsieve/launch.py, with a memory-backed /dev/shm for NCCL); `evaluate` stays one process on one GPU;
- multi-node: with `nodes` M > 1 each training stage's task (`MULTI_NODE`) instead launches a
  `kubeflow.org/v1` PyTorchJob of M pods with `gpus` GPUs each and waits for it (`PYTORCHJOB_COMPONENTS`,
  labelsieve/pytorchjob.py); the task itself requests no GPU. Needs the Kubeflow training operator, an
  S3-compatible pipeline root and RBAC to create PyTorchJobs; never run against a cluster so far;
- CPU and memory requests; retries with exponential backoff; caching on, except for `ingest`, whose
  crawl root gains crawls while its inputs stay the same, and `publish`, whose published model changes;
- S3: `ingest` (crawls, accumulated store), `warmup` (`warmup.init_from: latest`) and `publish` read
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL from the Kubernetes secret `s3_secret`
  (kfp-kubernetes `use_secret_as_env`). Artifacts between stages go through the cluster's own artifact
  store, not through these credentials.

Each stage's task gets only the params its stage reads (pipeline parameter `<stage>_params`, filled by
`labelsieve.kfp_client.arguments`), so its cache key changes exactly when DVC would rerun it. With a
`crawl_root`, `ingest` appends the crawls the accumulated dataset lacks, and the run ends after it when
there is none (ingest returns has_new "false"). After `evaluate`, the step `publish` (not a DVC stage)
publishes the retrained model to `publish.to` if it passes the accuracy gate (labelsieve/publish.py) and
returns "published", "refused" or "off".

Compile with `labelsieve pipeline compile` (writes pipelines/labelsieve_pipeline.yaml).
"""

from typing import Any

from kfp import dsl, kubernetes

from components import COMPONENTS, PYTORCHJOB_COMPONENTS, TORCHRUN_COMPONENTS
from components.image import IMAGE
from labelsieve.launch import standalone_launcher
from labelsieve.pytorchjob import job_settings
from labelsieve.stages import DATASET, MODEL, STAGES

CPU_ONLY = frozenset({"ingest", "inject_noise", "publish"})  # steps that never train (publish: 2 test passes)
DATA_PARALLEL = frozenset(TORCHRUN_COMPONENTS)  # data-parallel over the GPUs of their pod under torchrun
MULTI_NODE = frozenset(PYTORCHJOB_COMPONENTS)  # the stages that train: a PyTorchJob with more than one node
UNCACHED = frozenset({"ingest", "publish"})  # their results depend on object storage, not only on inputs
S3_TASKS = frozenset({"ingest", "warmup", "publish"})  # steps that may read or write object storage
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
RETRIES = 3
BACKOFF = {"backoff_duration": "30s", "backoff_factor": 2.0, "backoff_max_duration": "600s"}


def build_pipeline(
    *,
    image: str = IMAGE,
    gpus: int = 1,
    accelerator: str = "nvidia.com/gpu",
    node_selector: dict[str, str] | None = None,
    s3_secret: str = "labelsieve-s3",
    cpu: str = "4",
    memory: str = "16G",
    nodes: int = 1,
) -> Any:
    """The pipeline function, with cluster settings fixed at compile time.

    Args:
        image: the container image every task runs in.
        gpus: GPUs per data-parallel task (per pod of a PyTorchJob), run under torchrun when more than 1;
            every other task that runs a network requests one (0: no GPU requested anywhere).
        accelerator: the Kubernetes resource name of the GPU.
        node_selector: node labels a GPU task must match, e.g. {"cloud.google.com/gke-accelerator": "..."}.
        s3_secret: name of the Kubernetes secret holding the S3 endpoint and credentials.
        cpu, memory: requests for every task.
        nodes: pods per training stage (`MULTI_NODE`); more than 1 runs each as a PyTorchJob.

    Raises:
        ValueError: `nodes` below 1.
    """
    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")

    @dsl.pipeline(
        name="labelsieve",
        description="Train on noisy web labels and purify them: ingest -> ... -> retrain (docs/design.md).",
    )
    def labelsieve(
        ingest_params: str = "",
        inject_noise_params: str = "",
        warmup_params: str = "",
        co_divide_params: str = "",
        ssl_train_params: str = "",
        group_regularize_params: str = "",
        purify_params: str = "",
        retrain_params: str = "",
        evaluate_params: str = "",
        publish_params: str = "",
        crawl_root: str = "",
    ):
        """Args: `<stage>_params` the YAML text of the params that stage reads ("" = built-in defaults);
        `crawl_root` a folder or s3:// prefix of crawls ("" = ingest `ingest.source` once)."""
        texts = {
            "ingest": ingest_params,
            "inject_noise": inject_noise_params,
            "warmup": warmup_params,
            "co_divide": co_divide_params,
            "ssl_train": ssl_train_params,
            "group_regularize": group_regularize_params,
            "purify": purify_params,
            "retrain": retrain_params,
            "evaluate": evaluate_params,
            "publish": publish_params,
        }
        settings = (image, gpus, accelerator, node_selector or {}, s3_secret, cpu, memory, nodes)
        first = _stage_task("ingest", {"crawl_root": crawl_root}, texts, settings)
        produced: dict[str, Any] = {STAGES["ingest"].out_dir: first.outputs["out"]}
        with dsl.If(first.outputs["Output"] == "true", name="new-data"):  # Output: has_new
            for name, stage in list(STAGES.items())[1:]:
                inputs = {key: produced[path] for key, path in stage.inputs.items()}
                produced[stage.out_dir] = _stage_task(name, inputs, texts, settings).outputs["out"]
            gated = {"dataset_dir": DATASET, "model_dir": MODEL, "evaluate_dir": STAGES["evaluate"].out_dir}
            _stage_task("publish", {key: produced[path] for key, path in gated.items()}, texts, settings)

    return labelsieve


def _stage_task(
    name: str, inputs: dict[str, Any], texts: dict[str, Any], settings: tuple
) -> dsl.PipelineTask:
    """The task of stage `name` on `inputs`, given its params text, configured for the cluster."""
    image, gpus, accelerator, node_selector, s3_secret, cpu, memory, nodes = settings
    if name in MULTI_NODE and nodes > 1:
        job = job_settings(
            nodes=nodes,
            gpus=gpus,
            image=image,
            accelerator=accelerator,
            s3_secret=s3_secret,
            node_selector=node_selector,
            cpu=cpu,
            memory=memory,
        )
        task = PYTORCHJOB_COMPONENTS[name](params_yaml=texts[name], job=job, **inputs)
    elif name in DATA_PARALLEL and gpus > 1:
        launcher = standalone_launcher(gpus)
        task = TORCHRUN_COMPONENTS[name](params_yaml=texts[name], launcher=launcher, **inputs)
    else:
        task = COMPONENTS[name](params_yaml=texts[name], **inputs)
    task.set_display_name(name.replace("_", "-"))
    _configure(task, name, *settings)
    return task


def _configure(
    task: dsl.PipelineTask,
    name: str,
    image: str,
    gpus: int,
    accelerator: str,
    node_selector: dict[str, str],
    s3_secret: str,
    cpu: str,
    memory: str,
    nodes: int,
) -> None:
    """Apply the cluster settings of one task (see the module docstring)."""
    launches_job = name in MULTI_NODE and nodes > 1  # its pods are the PyTorchJob's, configured there
    if image != IMAGE:
        task.set_container_image(image)
    task.set_caching_options(name not in UNCACHED)
    task.set_retry(num_retries=RETRIES, **BACKOFF)
    task.set_cpu_request(cpu).set_memory_request(memory)
    if name in S3_TASKS or launches_job:
        # Optional: a source that is not on S3 runs without the secret; an S3 source without it fails in
        # boto3 with "no S3 credentials", naming the variables to set.
        kubernetes.use_secret_as_env(
            task, secret_name=s3_secret, secret_key_to_env={k: k for k in S3_KEYS}, optional=True
        )
    if name in CPU_ONLY or gpus <= 0 or launches_job:
        return
    task.set_accelerator_type(accelerator).set_accelerator_limit(gpus if name in DATA_PARALLEL else 1)
    kubernetes.add_toleration(task, key=accelerator, operator="Exists", effect="NoSchedule")
    for key, value in node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    if name in DATA_PARALLEL and gpus > 1:
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")


labelsieve_pipeline = build_pipeline()
