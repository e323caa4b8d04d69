"""gtp_pipeline: choose LM training data with Gradient Trajectory Pursuit and ClusterClip, under Dagster."""

__version__ = "0.1.0"
