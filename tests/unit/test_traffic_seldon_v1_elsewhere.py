"""Seldon Core v1: the candidate under another predictor name (the canary renamed by hand) keeps users on it; a
restore, like a rollback, takes them off (the predictor kept, at 0) and gives their share to stable."""

from __future__ import annotations

from test_traffic_seldon_v1_promote import STABLE_6, V7, sdep, staged_at_50


def test_restore_takes_users_off_the_candidate_under_another_name() -> None:
    router, fake, _, _ = staged_at_50(sdep())
    for predictor in fake.obj["spec"]["predictors"]:
        if predictor["name"] == "canary":
            predictor["name"] = "canary-b"
    assert router.observe().canary_weight == 50
    router.restore(STABLE_6)
    assert [(p["name"], p["traffic"], p["graph"]["modelUri"]) for p in fake.obj["spec"]["predictors"]] == [
        ("main", 100, "s3://m/6"), ("canary-b", 0, V7)]
    assert router.observe().canary_weight is None
