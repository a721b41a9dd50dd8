"""Kubeflow component for stage 1, `ingest`:
read the source named by `ingest.source`, or the new crawls under `crawl_root`, into the dataset store.

A thin adapter: artifact paths in, the registered stage's `run()`, artifacts out. Never cached: the
crawls under `crawl_root` change while its inputs do not.
"""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(
    params_yaml: str,
    crawl_root: str,
    out: Output[Dataset],
    metrics: Output[Metrics],
) -> str:
    """Run `ingest`; returns has_new: "false" when `crawl_root` holds no crawl the dataset lacks.

    (The return value, not a named output: kfp's local runner resolves only `Output` in conditions.)
    """
    from labelsieve.runner import run_ingest

    return "true" if run_ingest(params_yaml, crawl_root, metrics, out_dir=out.path) else "false"
