"""ClusterClip: embeddings, spherical k-means and the cluster-balanced sampler with its repetition clip."""
