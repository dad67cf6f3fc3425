"""One invocation, pure apart from the network: body bytes in, (answer bytes, media type) out."""

from __future__ import annotations

import time

from segmentation_trainer import codecs
from segmentation_trainer.predict import Deadline, DeadlineExceeded, class_mask
from segmentation_trainer.serving.config import ServeConfig
from segmentation_trainer.serving.model import LoadedModel, building_class


def infer(
    body: bytes,
    content_type: str | None,
    accept: str | None,
    model: LoadedModel,
    config: ServeConfig,
    deadline: Deadline | None = None,
):
    """One request, pure apart from the network: (body bytes, response media type).

    With a ``deadline``, an image whose estimated cost exceeds what is left of it is refused before the
    prediction starts, and the prediction stops between window batches once it passes (:class:`DeadlineExceeded`).
    """
    media = codecs.parse_content_type(content_type)
    answer = codecs.negotiate_accept(accept)
    if len(body) > config.max_payload_bytes:
        raise codecs.PayloadTooLarge(
            f"request body of {len(body)} bytes exceeds {config.max_payload_mb:g} MB "
            "(SAGEMAKER_MAX_PAYLOAD_IN_MB): split the image into tiles"
        )
    predictor = model.predictor(config)
    bands = predictor.config.bands
    # the band count and the decoded size are checked from the body's header, before any pixel is decoded; so are
    # the request deadline and the time estimate (a decode cannot be interrupted once started)
    names = model.metadata.get("band_names")

    def before_decode(height: int, width: int) -> None:
        if deadline is None:
            return
        deadline.check()
        windows = predictor.window_count(height, width)
        estimate = model.estimate_s(windows)
        if estimate is not None and estimate > deadline.remaining():
            raise DeadlineExceeded(
                f"this {width} x {height} image needs {windows} windows, about {estimate:.0f} s at the fastest "
                f"speed measured, more than the {max(0.0, deadline.remaining()):.1f} s left of the request deadline",
                0,
                windows,
            )

    image = codecs.decode_request(
        body,
        media,
        bands=bands,
        max_pixels=config.max_pixels,
        band_names=names if isinstance(names, list) else None,
        before_decode=before_decode,
    )
    windows = predictor.window_count(*image.array.shape[1:])
    if deadline is not None and deadline.remaining() <= 0:
        raise DeadlineExceeded(
            f"decoding the {image.width} x {image.height} image took the whole request deadline "
            f"({deadline.elapsed():.1f} s)",
            0,
            windows,
        )
    started = time.perf_counter()
    probabilities = predictor.probabilities(image.array, deadline=deadline)
    model.observe(windows, time.perf_counter() - started)
    num_classes = predictor.config.num_classes
    if answer in (codecs.RECORDIO_PROTOBUF, codecs.PROTOBUF):
        return codecs.encode_probabilities(probabilities), answer
    if image.nodata is None:  # no nodata declared by the request: the training data's nodata value, if any
        image.nodata = model.nodata_value()
    mask = class_mask(probabilities, ignore=image.nodata_mask(), ignore_value=codecs.IGNORE_CLASS)
    if answer == codecs.PNG:
        return codecs.encode_png(mask, num_classes), answer
    if answer == codecs.TIFF:
        names = model.metadata.get("class_names")
        return codecs.encode_geotiff(mask, image.crs, image.transform, names), answer
    summary = codecs.summarize(
        mask,
        num_classes,
        model.metadata.get("class_names"),
        building_class(model.metadata),
        config.min_building_pixels,
    )
    return codecs.encode_json(summary), answer
