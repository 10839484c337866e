"""The SageMaker PyTorch framework images, looked up with the SageMaker SDK (for the jobs and the registry)."""


def pytorch_image(scope: str, *, region: str, version: str, py_version: str, instance_type: str) -> str:
    """The AWS PyTorch framework image URI for 'training' or 'inference' in `region`."""
    from sagemaker.core import image_uris  # slow import, only where an image is needed

    return image_uris.retrieve(framework="pytorch", region=region, version=version, py_version=py_version,
                               instance_type=instance_type, image_scope=scope)
