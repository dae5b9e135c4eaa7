"""config publish: which merged models are pushed, under which repo ids (no network)."""

import pytest

from otamerge.workflow.publish import lora_merges, publish_repos


def test_every_merge_of_every_seed_gets_its_own_repo():
    got = publish_repos({"repo": "me/{merge}-seed{seed}"}, ["ota_ffg", "ties"], [0, 1])
    assert got == {(0, "ota_ffg"): "me/ota_ffg-seed0", (0, "ties"): "me/ties-seed0",
                   (1, "ota_ffg"): "me/ota_ffg-seed1", (1, "ties"): "me/ties-seed1"}
    assert publish_repos({"repo": "me/{merge}", "merges": ["ties"]}, ["ota_ffg", "ties"], [3]) == {
        (3, "ties"): "me/ties"}
    assert publish_repos(None, ["ties"], [0]) == {}


@pytest.mark.parametrize("publish,message", [
    ({"repo": "me/merged"}, "gives several models one repo id"),
    ({"repo": "me/{merge}"}, "gives several models one repo id"),  # two seeds, one repo per merge
    ({"repo": "me/{merge}-{seed}-{step}"}, "only {merge} and {seed} are replaced"),
    ({"repo": "me/{merge}-{seed}", "merges": ["slerp"]}, "slerp not among the merges"),
])
def test_a_config_that_cannot_publish_is_refused_naming_why(publish, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        publish_repos(publish, ["ota_ffg", "ties"], [0, 1])


def test_lora_extracts_the_chosen_merges_of_every_seed():
    assert lora_merges({"rank": 8}, ["ota_ffg", "ties"], [0, 1]) == [(0, "ota_ffg"), (0, "ties"), (1, "ota_ffg"),
                                                                   (1, "ties")]
    assert lora_merges({"merges": ["ties"]}, ["ota_ffg", "ties"], [2]) == [(2, "ties")]
    assert lora_merges(None, ["ties"], [0]) == []
    with pytest.raises(ValueError, match="lora.merges: slerp not among the merges"):
        lora_merges({"merges": ["slerp", "ties"]}, ["ota_ffg", "ties"], [0])
