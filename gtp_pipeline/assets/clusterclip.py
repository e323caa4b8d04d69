"""ClusterClip stage: sentence embeddings, spherical k-means clusters, and the balanced sampling plans."""

import time

import dagster as dg

from gtp_pipeline.assets.locations import centroids_name, corpus_version, embeddings_path
from gtp_pipeline.assets.metadata import markdown_metadata, md_image, metadata_table
from gtp_pipeline.automation import ON_INPUT_DATA_CHANGE
from gtp_pipeline.resources.embedder import EmbedderResource
from gtp_pipeline.resources.profile import ProfileResource
from gtp_pipeline.resources.storage import ArtifactStore

CLUSTERCLIP_CODE_VERSION = "1"


class ClusterConfig(dg.Config):
    """Run-config overrides of the profile's clustering settings (0 / "" = the profile's value)."""

    K: int = 0
    max_iter: int = 0
    seed: int = -1
    precision: str = ""


class PlanConfig(dg.Config):
    """Run-config overrides of the sampler (0 = the profile's R)."""

    R: int = 0
    seed: int = -1


@dg.asset(
    automation_condition=ON_INPUT_DATA_CHANGE,
    group_name="clusterclip",
    kinds={"torch", "zarr"},
    code_version=CLUSTERCLIP_CODE_VERSION,
)
def embeddings(
    context: dg.AssetExecutionContext,
    raw_corpus,
    profile: ProfileResource,
    store: ArtifactStore,
    embedder: EmbedderResource,
) -> dg.MaterializeResult:
    """Unit-norm sentence embeddings of every pool example (Zarr, fp16, row order = raw_corpus order), resumable."""
    from gtp_pipeline.core.clusterclip.embed import embed_into_store, example_text

    version = corpus_version(raw_corpus)
    path = embeddings_path(store, version)
    texts = [example_text(p, r) for p, r in zip(raw_corpus["prompt"], raw_corpus["response"], strict=True)]

    def progress(done: int, total: int, rate: float) -> None:
        context.log.info(f"embeddings: chunk {done}/{total} done, {rate:.0f} rows/s")

    model = embedder.embedder()
    result = embed_into_store(
        texts,
        raw_corpus["example_id"].to_list(),
        model,
        path,
        chunk_rows=profile.settings().clusters.embed_chunk_rows,
        identity={"corpus_version": version},
        progress=progress,
    )
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "rows": raw_corpus.height,
            "dim": model.dim,
            "model": str(model.identity()),
            "chunks_written": result.chunks_written,
            "chunks_resumed": result.chunks_skipped,
            "rows_per_s": round(result.rows_per_s, 1),
            "bytes_on_disk": result.store.nbytes_on_disk(),
        },
        data_version=dg.DataVersion(result.store.content_hash()),
    )


@dg.asset(
    automation_condition=ON_INPUT_DATA_CHANGE,
    group_name="clusterclip",
    kinds={"torch", "parquet"},
    code_version=CLUSTERCLIP_CODE_VERSION,
    deps=["embeddings", "cluster_recipe"],
)
def clusters(
    context: dg.AssetExecutionContext,
    raw_corpus,
    profile: ProfileResource,
    store: ArtifactStore,
    config: ClusterConfig,
):
    """Each pool example's spherical k-means cluster and cosine similarity to its centroid; centroids in Zarr."""
    import numpy as np
    import polars as pl
    import zarr

    from gtp_pipeline.core.clusterclip.kmeans import KMeansConfig, spherical_kmeans
    from gtp_pipeline.core.evaluation.plots import histogram_png, lines_png
    from gtp_pipeline.core.storage.feature_store import FeatureStore

    settings = profile.settings().clusters
    version = corpus_version(raw_corpus)
    features = FeatureStore.open(embeddings_path(store, version))
    kconfig = KMeansConfig(
        K=config.K or settings.K,
        max_iter=config.max_iter or settings.max_iter,
        seed=config.seed if config.seed >= 0 else settings.seed,
        precision=config.precision or settings.precision,
    )
    context.log.info(f"spherical k-means: N={raw_corpus.height}, K={kconfig.K}, precision={kconfig.precision}")

    def on_iteration(iteration: int, objective: float, seconds: float) -> None:
        if iteration % 10 == 0:
            context.log.info(f"k-means iteration {iteration}: mean cosine {objective:.4f}")

    fit = spherical_kmeans(features, kconfig, on_iteration=on_iteration)
    with store.local_folder("clusters") as folder:
        centroids = zarr.create_array(
            store=str(folder / centroids_name(version)), shape=fit.centroids.shape, dtype="float32", overwrite=True
        )
        centroids[:] = fit.centroids
    path = store.path_for("clusters", centroids_name(version))
    table = pl.DataFrame(
        {"example_id": raw_corpus["example_id"], "cluster": fit.labels.astype(np.int64), "similarity": fit.similarity}
    )
    sizes = fit.cluster_sizes
    reps = []
    for k in np.argsort(-sizes)[:12]:
        members = (
            table.with_row_index().filter(pl.col("cluster") == int(k)).sort("similarity", descending=True).head(2)
        )
        for row in members.iter_rows(named=True):
            source = raw_corpus.row(row["index"], named=True)
            reps.append(
                {
                    "cluster": int(k),
                    "size": int(sizes[k]),
                    "similarity": round(row["similarity"], 3),
                    "task": source["task"],
                    "prompt": source["prompt"][:90],
                }
            )
    objective = [float(x) for x in fit.objective]
    return dg.Output(
        table,
        metadata={
            "K": kconfig.K,
            "iterations": fit.iterations,
            "converged": fit.converged,
            "mean_cosine": round(objective[-1], 4),
            "seconds_per_iteration": round(fit.seconds_per_iter, 4),
            "empty_clusters_reseeded": fit.n_reseeded,
            "cluster_size_min_median_max": f"{int(sizes.min())} / {int(np.median(sizes))} / {int(sizes.max())}",
            "centroids": dg.MetadataValue.path(str(path)),
            "cluster_sizes": md_image(
                histogram_png(
                    sizes.tolist(), bins=min(40, kconfig.K), title="cluster sizes", xlabel="examples per cluster"
                ),
                "cluster sizes",
            ),
            "objective": md_image(
                lines_png(
                    {"mean cosine": (list(range(1, len(objective) + 1)), objective)},
                    title="k-means objective",
                    xlabel="iteration",
                ),
                "objective",
            ),
            "representatives": markdown_metadata(reps),
        },
    )


@dg.asset(
    automation_condition=ON_INPUT_DATA_CHANGE,
    group_name="clusterclip",
    kinds={"numpy", "parquet"},
    code_version=CLUSTERCLIP_CODE_VERSION,
    deps=["cluster_recipe", "selection_recipe"],
)
def clusterclip_plan(context: dg.AssetExecutionContext, clusters, profile: ProfileResource, config: PlanConfig):
    """Sampling streams (step -> example_id) per budget: ClusterClip, and the paper's random and uniform baselines."""
    import numpy as np
    import polars as pl

    from gtp_pipeline.core.clusterclip.sampler import SamplerConfig, plan_samples
    from gtp_pipeline.core.config.profiles import budget_count, budget_label
    from gtp_pipeline.core.evaluation.plots import bar_png, histogram_png

    settings = profile.settings()
    R = config.R or settings.clusters.R
    seed = config.seed if config.seed >= 0 else settings.clusters.seed
    labels = clusters["cluster"].to_numpy()
    ids = clusters["example_id"].to_numpy()
    n_clusters = int(labels.max()) + 1
    frames, summary, largest = [], [], None
    for budget in settings.budgets.budgets:
        M = settings.budgets.train_epochs * budget_count(budget, len(labels))  # same draws as a selection's fine-tune
        for method in ("clusterclip", "uniform", "random"):
            start = time.perf_counter()
            plan = plan_samples(labels, M, SamplerConfig(method=method, R=R, seed=seed), n_clusters=n_clusters)
            frames.append(
                pl.DataFrame(
                    {
                        "method": method,
                        "budget": budget_label(budget),
                        "step": np.arange(M),
                        "example_id": ids[plan.stream],
                    }
                )
            )
            summary.append(
                {
                    "method": method,
                    "budget": budget_label(budget),
                    "draws": M,
                    "distinct_examples": int((plan.use_counts > 0).sum()),
                    "max_repetitions": int(plan.use_counts.max()),
                    "fallback_step": "-" if plan.fallback_step is None else plan.fallback_step,
                    "seconds": round(time.perf_counter() - start, 4),
                }
            )
            if plan.fallback_step is not None:
                context.log.warning(
                    f"{method} @ {budget_label(budget)}: every cluster retired at draw {plan.fallback_step} of {M}; random fallback after that"
                )
            if method == "clusterclip" and (largest is None or M >= largest.stream.size):
                largest = plan  # the plots show the longest ClusterClip stream
    plan = largest
    random_share = np.bincount(labels, minlength=n_clusters) / len(labels)
    clip_share = plan.cluster_draws / plan.cluster_draws.sum()
    order = np.argsort(-random_share)
    return dg.Output(
        pl.concat(frames),
        metadata={
            "R": R,
            "seed": seed,
            "plans": metadata_table(summary),
            "repetitions": md_image(
                histogram_png(
                    plan.use_counts.tolist(),
                    bins=max(2, int(plan.use_counts.max()) + 1),
                    title=f"ClusterClip uses per example (R={R})",
                    xlabel="uses",
                    log_y=True,
                ),
                "repetitions",
            ),
            "cluster_share": md_image(
                bar_png(
                    [str(k) for k in order],
                    (clip_share[order] - random_share[order]).tolist(),
                    title="ClusterClip share minus pool share, per cluster (largest first)",
                    ylabel="share difference",
                ),
                "cluster share",
            ),
        },
    )
