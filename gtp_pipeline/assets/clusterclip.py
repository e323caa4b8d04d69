"""ClusterClip stage: sentence embeddings, spherical k-means clusters, and the balanced sampling plans."""

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

    def kmeans_config(self, settings):
        """The profile's clustering settings (core's ClusterSettings) with these overrides, as core's KMeansConfig."""
        from gtp_pipeline.core.clusterclip.kmeans import KMeansConfig

        return KMeansConfig(
            K=self.K or settings.K,
            max_iter=self.max_iter or settings.max_iter,
            seed=self.seed if self.seed >= 0 else settings.seed,
            precision=self.precision or settings.precision,
        )


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
    from gtp_pipeline.core.clusterclip.pool_clusters import cluster_pool, write_centroids
    from gtp_pipeline.core.evaluation.plots import histogram_png, lines_png
    from gtp_pipeline.core.storage.feature_store import FeatureStore

    version = corpus_version(raw_corpus)
    kconfig = config.kmeans_config(profile.settings().clusters)
    context.log.info(f"spherical k-means: N={raw_corpus.height}, K={kconfig.K}, precision={kconfig.precision}")

    def on_iteration(iteration: int, objective: float, seconds: float) -> None:
        if iteration % 10 == 0:
            context.log.info(f"k-means iteration {iteration}: mean cosine {objective:.4f}")

    clustered = cluster_pool(raw_corpus, FeatureStore.open(embeddings_path(store, version)), kconfig, on_iteration)
    with store.local_folder("clusters") as folder:
        write_centroids(folder / centroids_name(version), clustered.fit.centroids)
    sizes, objective = clustered.fit.cluster_sizes.tolist(), [float(x) for x in clustered.fit.objective]
    sizes_png = histogram_png(sizes, bins=min(40, kconfig.K), title="cluster sizes", xlabel="examples per cluster")
    steps = list(range(1, len(objective) + 1))
    objective_png = lines_png({"mean cosine": (steps, objective)}, title="k-means objective", xlabel="iteration")
    return dg.Output(
        clustered.table,
        metadata={
            **clustered.summary(),
            "centroids": dg.MetadataValue.path(str(store.path_for("clusters", centroids_name(version)))),
            "cluster_sizes": md_image(sizes_png, "cluster sizes"),
            "objective": md_image(objective_png, "objective"),
            "representatives": markdown_metadata(clustered.representatives),
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
    from gtp_pipeline.core.clusterclip.sampler import plan_budgets
    from gtp_pipeline.core.evaluation.plots import bar_png, histogram_png

    settings = profile.settings()
    R = config.R or settings.clusters.R
    seed = config.seed if config.seed >= 0 else settings.clusters.seed
    labels, ids = clusters["cluster"].to_numpy(), clusters["example_id"].to_numpy()
    plans = plan_budgets(labels, ids, settings.budgets.budgets, settings.budgets.train_epochs, R, seed)
    for line in plans.fallbacks:
        context.log.warning(line)
    uses = plans.longest.use_counts
    uses_title = f"ClusterClip uses per example (R={R})"
    uses_png = histogram_png(
        uses.tolist(), bins=max(2, int(uses.max()) + 1), title=uses_title, xlabel="uses", log_y=True
    )
    share_title = "ClusterClip share minus pool share, per cluster (largest first)"
    clusters_shown = [str(k) for k in plans.cluster_order]
    share_png = bar_png(clusters_shown, plans.share_gap.tolist(), title=share_title, ylabel="share difference")
    return dg.Output(
        plans.table,
        metadata={
            "R": R,
            "seed": seed,
            "plans": metadata_table(plans.summary),
            "repetitions": md_image(uses_png, "repetitions"),
            "cluster_share": md_image(share_png, "cluster share"),
        },
    )
