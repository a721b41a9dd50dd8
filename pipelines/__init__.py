"""The compiled labelsieve Kubeflow pipeline and its source."""
