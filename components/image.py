"""The image every labelsieve component runs in: the project image built from the repository Dockerfile.

`build_pipeline(image=...)` (or `labelsieve pipeline compile --image REGISTRY/labelsieve:TAG --output PATH`)
points a compiled pipeline at a pushed copy; the default is the local tag the Dockerfile documents, which
`submit` and `schedule` refuse unless given `--allow-default-image`.
"""

IMAGE = "labelsieve:latest"
