"""What a run is: the environment settings, profiles and the configuration file, run keys, what each stage's inputs are, and the error every bad setting raises."""
