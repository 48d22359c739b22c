"""Review s29seldonv1: Seldon Core v1's observe after hand edits mid-canary. The candidate's modelUri written into
stable's graph reads as the candidate serving as stable (the engine restores stable); the canary renamed by hand
still reads as the candidate staged, with its share (the engine unstages it)."""

from __future__ import annotations

from test_traffic_seldon_v1_promote import STABLE_6, V7, sdep, seldon_reports, staged_at_50

from controller.traffic.seldon import deployment_names, seldon_name


def test_the_candidates_uri_in_stable_reads_as_the_candidate_serving_as_stable() -> None:
    router, fake, _, canary = staged_at_50(sdep())
    fake.obj["spec"]["predictors"][0]["graph"]["modelUri"] = V7  # promoted by hand, the canary left at 50%
    state = router.observe()
    assert (state.stable_version, state.canary_version, state.canary_weight) == ("7", "7", 50)
    assert "loads the candidate's modelUri" in state.message
    router.restore(STABLE_6)
    [main] = fake.obj["spec"]["predictors"]
    assert (main["graph"]["modelUri"], main["traffic"]) == ("s3://m/6", 100)
    new = [seldon_name(n) for n in deployment_names("x", main)]
    # Stable's restored Deployments not available yet: no version, not ready, and no canary.
    seldon_reports(fake, {**dict.fromkeys(canary, True), **dict.fromkeys(new, False)})
    state = router.observe()
    assert (state.stable_version, state.ready, state.canary_weight) == (None, False, None)
    seldon_reports(fake, dict.fromkeys(new, True))
    state = router.observe()
    assert (state.stable_version, state.ready, state.canary_weight) == ("6", True, None)


def test_a_renamed_canary_reads_as_the_candidate_staged() -> None:
    router, fake, _, _ = staged_at_50(sdep())
    fake.obj["spec"]["predictors"][1]["name"] = "canary-b"
    state = router.observe()
    assert (state.canary_version, state.canary_weight, state.canary_name) == ("7", 50, None)
    router.rollback()
    state = router.observe()
    assert (state.canary_version, state.canary_weight) == (None, None)
    assert [(p["name"], p["traffic"]) for p in fake.obj["spec"]["predictors"]] == [("main", 100), ("canary-b", 0)]
