"""Where an evaluation episode went, from the env's infos, and the per-family diagnostics `mot eval`
reports: tells a grounding failure (went to the wrong object) from a control failure (got there, missed).
"""

from __future__ import annotations

import numpy as np


class EpisodeTrace:
    """Where an episode went, from the env's infos: tells a grounding failure from a control failure.

    closest_target_m      smallest TCP-to-target-object distance of the episode (m)
    went_to_target        at the TCP's closest approach to *any* object (xy), that object was the target
    object_to_pad_m       last target-object-to-target-pad distance in xy (push / place only, m)
    first_point_err_px    a policy that points itself (target points): its object point's distance from the truth
                          in the first camera at the first plan (pixels); first_pad_point_err_px the same for the pad
    first_point_on_target the scene object nearest that point is the instruction's (a wrong object, not an
                          imprecise point, when false)
    point_err_px          per pointing camera, the median over the episode's plans of the object point's error
                          (a camera that moves with the arm loses the object from view)
    point_confidence      per camera, the mean over the episode's plans of the grounding head's confidence in
                          its object point (policy.grounding.point_confidence)
    """

    def __init__(self) -> None:
        self.closest_target = np.inf
        self.closest_any = np.inf
        self.closest_is_target = False
        self.object_to_pad: float | None = None
        self.first_point_err_px: float | None = None  # set by ChunkedPolicy (a policy that points itself)
        self.first_pad_point_err_px: float | None = None
        self.first_point_on_target: bool | None = None
        self.point_errs_px: dict[str, list[float]] = {}
        self.point_confidence: dict[str, list[float]] = {}

    def observe(self, info: dict) -> None:
        """Reads the sim's info (TCP, objects); an env that reports none of it (another robot) leaves the
        trace empty and its episodes get success rates without diagnostics."""
        if not {"tcp_pos", "target_object_pos", "objects"} <= set(info):
            return
        tcp = np.asarray(info["tcp_pos"], np.float64)
        target = np.asarray(info["target_object_pos"], np.float64)
        self.closest_target = min(self.closest_target, float(np.linalg.norm(tcp - target)))
        for obj in info["objects"]:
            d = float(np.linalg.norm(tcp[:2] - np.asarray(obj["pos"], np.float64)[:2]))
            if d < self.closest_any:
                self.closest_any, self.closest_is_target = d, obj["name"] == info["target_object"]
        if info.get("target_pad_pos") is not None:
            self.object_to_pad = float(np.linalg.norm(target[:2] - np.asarray(info["target_pad_pos"])[:2]))

    def summary(self) -> dict:
        out = {}
        if np.isfinite(self.closest_target):  # the sim's info was observed (see observe)
            out.update(closest_target_m=self.closest_target, went_to_target=self.closest_is_target)
        if self.object_to_pad is not None:
            out["object_to_pad_m"] = self.object_to_pad
        if self.first_point_err_px is not None:
            out["first_point_err_px"] = self.first_point_err_px
        if self.first_pad_point_err_px is not None:
            out["first_pad_point_err_px"] = self.first_pad_point_err_px
        if self.first_point_on_target is not None:
            out["first_point_on_target"] = self.first_point_on_target
        if self.point_errs_px:
            out["point_err_px"] = {c: float(np.median(e)) for c, e in self.point_errs_px.items()}
        if self.point_confidence:
            out["point_confidence"] = {c: float(np.mean(v)) for c, v in self.point_confidence.items()}
        return out


def diagnostics(traces: list[dict]) -> dict:
    """Per-family means of `EpisodeTrace.summary()`s (medians for distances: a few wild episodes do not hide the rest)."""
    out = {}
    reached = [t for t in traces if "closest_target_m" in t]  # none from an env without the sim's info
    if reached:
        out["median_closest_target_m"] = round(float(np.median([t["closest_target_m"] for t in reached])), 4)
        out["went_to_target_rate"] = round(float(np.mean([t["went_to_target"] for t in reached])), 3)
    pads = [t["object_to_pad_m"] for t in traces if "object_to_pad_m" in t]
    if pads:
        out["median_object_to_pad_m"] = round(float(np.median(pads)), 4)
    points = [t["first_point_err_px"] for t in traces if "first_point_err_px" in t]
    if points:  # where the policy put the object on the first frame, in the first camera
        out["median_first_point_err_px"] = round(float(np.median(points)), 2)
        out["first_point_within_8px_rate"] = round(float(np.mean(np.array(points) <= 8.0)), 3)
    pad_points = [t["first_pad_point_err_px"] for t in traces if "first_pad_point_err_px" in t]
    if pad_points:
        out["median_first_pad_point_err_px"] = round(float(np.median(pad_points)), 2)
        out["first_pad_point_within_8px_rate"] = round(float(np.mean(np.array(pad_points) <= 8.0)), 3)
    on_target = [t["first_point_on_target"] for t in traces if "first_point_on_target" in t]
    if on_target:
        out["first_point_on_target_rate"] = round(float(np.mean(on_target)), 3)
    along = [t["point_err_px"] for t in traces if "point_err_px" in t]
    if along:  # per camera: median over episodes of each episode's median error along the way
        out["median_point_err_px"] = {c: round(float(np.median([a[c] for a in along])), 2) for c in along[0]}
    confident = [t["point_confidence"] for t in traces if "point_confidence" in t]
    if confident:  # per camera: mean over episodes of the head's mean confidence in its object point
        out["mean_point_confidence"] = {c: round(float(np.mean([a[c] for a in confident])), 3) for c in confident[0]}
    return out
