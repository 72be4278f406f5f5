"""S3 refusals of the embedded AWS, installed in the moto server process by `moto_fidelity.apply_all`."""

from __future__ import annotations

# S3 user guide, "Amazon S3 multipart upload limits": parts are 5 MiB to 5 GiB, "There is no minimum
# size limit on the last part". A smaller earlier part makes CompleteMultipartUpload fail with
# `EntityTooSmall` (HTTP 400, "Your proposed upload is smaller than the minimum allowed object size.").
MIN_PART_BYTES = 5 * 1024 * 1024


def install() -> None:
    """moto already answers `EntityTooSmall` exactly so, but takes the minimum from the environment
    variable S3_UPLOAD_PART_MIN_SIZE; pin it to S3's, so no inherited setting can loosen it."""
    import moto.s3.models as s3_models

    setattr(s3_models, "S3_UPLOAD_PART_MIN_SIZE", MIN_PART_BYTES)  # noqa: B010 - moto's module global
