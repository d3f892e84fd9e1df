"""The over-forgetting guard's level can be taken from the gold standard that `unlearn prepare` built."""

import pytest

from utils.errors import UserError
from utils.experiment.inputs import resolve_forget_loss_ceiling


def test_gold_standard_level_is_read_from_the_prepare_report(small_world):
    config = resolve_forget_loss_ceiling(small_world.config("method.forget_loss_ceiling=gold_standard"))
    expected = small_world.report["gold_standard"]["forget"]["output_nll"]
    target_level = small_world.report["target"]["forget"]["output_nll"]
    assert config.method.forget_loss_ceiling == pytest.approx(expected)
    assert expected > target_level  # the gold standard never saw the forget answers


def test_numbers_pass_through_and_a_missing_report_is_a_clear_error(small_world, tmp_path):
    config = small_world.config("method.forget_loss_ceiling=4.5")
    assert resolve_forget_loss_ceiling(config).method.forget_loss_ceiling == 4.5
    with pytest.raises(UserError, match="prepare_report.json"):
        resolve_forget_loss_ceiling(small_world.config("method.forget_loss_ceiling=gold_standard",
                                                       f"workdir={tmp_path}"))


def test_document_scope_reads_the_gold_standards_whole_text_nll(small_world):
    config = resolve_forget_loss_ceiling(small_world.config("method.forget_loss_ceiling=gold_standard",
                                                            "method.forget_loss_ceiling_scope=document"))
    gold, target = small_world.report["gold_standard"]["forget"], small_world.report["target"]["forget"]
    assert config.method.forget_loss_ceiling == pytest.approx(gold["text_nll"])
    assert gold["text_nll"] > target["text_nll"]
