"""Readable names of a sweep's trials (the MLflow child runs' names and the progress lines):
the trial's number and the values it was given, or its variant and seed when confirming."""

from __future__ import annotations

from xalign.sweep.runner import experiment_tag, trial_label


def test_a_search_trial_is_named_by_its_number_and_sampled_values():
    tag = experiment_tag("/r/small/search/run_trial_701a2425_3_objective.temperature=0.1073,optim.lr=0.0030_2026-12-06",
                         "run_trial_701a2425")
    assert tag.startswith("3_")
    assert trial_label("search", tag, {"objective.temperature": 0.10729596, "optim.lr": 0.003,
                                       "data.mix.replay_share": 0.25}) == \
        "3: temperature=0.107 lr=0.003 replay_share=0.25"


def test_a_key_whose_last_part_is_ambiguous_keeps_its_full_name():
    assert trial_label("search", "1_x", {"objective.layer": 2, "data.layer": 1}) == "1: objective.layer=2 data.layer=1"


def test_confirmation_runs_are_named_by_variant_and_seed_counted_from_one():
    assert trial_label("confirm", "0_seed=1", {"seed": 1, "objective.temperature": 0.1}) == "confirm 1: best seed=1"
    assert trial_label("confirm", "3_x", {"seed": 0, "__control__": "no_contrastive"}) == \
        "confirm 4: no_contrastive seed=0"
