"""Review: where to look, where the model is wrong, and how much to trust its probabilities.

Plain Python over arrays and result stores (no Qt), for the review dock, the
``napari-histo review`` command and the benchmark:

- ``regions``: candidate squares ranked by a score (:data:`SCORES`), vectorised;
- ``suggest``: what to annotate next (high score, spread out);
- ``state``: :class:`ReviewQueue`, its decisions saved beside the slide;
- ``disagreement``: each member's probability on a region and an agreement map;
- ``errors``: TP / FP / FN / TN map against annotations, Dice, precision, recall, CSV;
- ``calibration``: temperature scaling, ECE before / after, calibrated model versions;
- ``correct``: a region's thresholded probability as annotations (box, ellipse, pixel);
- ``run``: the same on a stored run (latest complete run, ranking, error map, calibration).
"""

from __future__ import annotations

from napari_histo.review.calibration import (
    CalibrationResult,
    calibrate,
    draw_reliability,
    ensemble_temperature,
    fit_calibration,
    fit_temperature,
    held_out_stripes,
    temperature_for_models,
    write_calibrated_versions,
    write_calibration_png,
)
from napari_histo.review.correct import GRANULARITIES, region_annotations
from napari_histo.review.disagreement import (
    MemberDisagreement,
    agreement_map,
    member_probabilities,
    region_disagreement,
)
from napari_histo.review.errors import (
    ERROR_CLASSES,
    ErrorScores,
    error_map,
    error_scores,
    write_error_csv,
)
from napari_histo.review.regions import (
    SCORES,
    UNLABELLED,
    Region,
    RegionGrid,
    choose_level,
    level_geometry,
    pixel_scores,
    rank_regions,
)
from napari_histo.review.run import (
    REGION_UM,
    NoRunError,
    calibrated_levels,
    latest_complete_run,
    map_level,
    rank_run,
    run_calibration,
    run_error_map,
    run_labels,
    run_member_cards,
    run_temperature,
)
from napari_histo.review.state import (
    STATUSES,
    Decision,
    ReviewQueue,
    ReviewStateWarning,
    review_state_path,
    saved_ranking,
)
from napari_histo.review.suggest import suggest_regions

__all__ = [
    "ERROR_CLASSES",
    "GRANULARITIES",
    "REGION_UM",
    "SCORES",
    "STATUSES",
    "UNLABELLED",
    "CalibrationResult",
    "Decision",
    "ErrorScores",
    "MemberDisagreement",
    "NoRunError",
    "Region",
    "RegionGrid",
    "ReviewQueue",
    "ReviewStateWarning",
    "agreement_map",
    "calibrate",
    "calibrated_levels",
    "choose_level",
    "draw_reliability",
    "ensemble_temperature",
    "error_map",
    "error_scores",
    "fit_calibration",
    "fit_temperature",
    "held_out_stripes",
    "latest_complete_run",
    "level_geometry",
    "map_level",
    "member_probabilities",
    "pixel_scores",
    "rank_regions",
    "rank_run",
    "region_annotations",
    "region_disagreement",
    "review_state_path",
    "run_calibration",
    "run_error_map",
    "run_labels",
    "run_member_cards",
    "run_temperature",
    "saved_ranking",
    "suggest_regions",
    "temperature_for_models",
    "write_calibrated_versions",
    "write_calibration_png",
    "write_error_csv",
]
