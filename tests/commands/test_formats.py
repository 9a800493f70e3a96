"""The printed tables carry one column per domain and, with several domains, the macro mean."""

from ensemble.commands import distill, pipeline, train_member
from ensemble.evaluate.report import markdown_table

TWO = {"mP@5": 0.6, "recall@1": 0.7, "mAP@100": 0.5, "macro_mP@5": 0.55, "per_domain": {"cars": 0.3, "toys": 0.8}}
ONE = {"mP@5": 0.6, "recall@1": 0.7, "mAP@100": 0.5, "per_domain": {"toys": 0.6}}


def test_member_table_has_macro_and_domain_columns():
    text = train_member.format_result({"name": "m", "flip_tta": True, "eval_image_size": 160,
                                       "untrained_backbone": TWO, "trained": {"neck": TWO, "backbone": TWO}})
    assert "| features | mP@5 | recall@1 | macro mP@5 | cars | toys |" in text
    assert "| untrained backbone | 0.600 | 0.700 | 0.550 | 0.300 | 0.800 |" in text
    single = train_member.format_result({"name": "m", "flip_tta": True, "eval_image_size": 160,
                                         "untrained_backbone": ONE, "trained": {"neck": ONE, "backbone": ONE}})
    assert "macro" not in single and "| trained, neck | 0.600 | 0.700 | 0.600 |" in single


def test_student_line_pipeline_and_eval_tables_have_the_macro_mean():
    line = distill.format_result({"name": "s", "teacher": "t", "eval_image_size": 160, "flip_tta": True,
                                  "student": {**TWO, "per_domain": {"cars": None, "toys": 0.8}}})
    assert line.endswith("mP@5 0.600, recall@1 0.700, macro mP@5 0.550, cars n/a, toys 0.800")
    table = pipeline.format_table({"pipeline": "p", "data": "d", "rows": [{"model": "a", **TWO}]})
    assert "| model | mP@5 | recall@1 | macro mP@5 | cars | toys | GFLOP/image | ms/image |" in table
    assert "| a | 0.600 | 0.700 | 0.550 | 0.300 | 0.800 | - | - |" in table
    md = markdown_table([{"model": "a", "dim": 64, **TWO}, {"model": "b", "dim": 64, **ONE}])
    assert "| model | dim | mP@5 | recall@1 | mAP@100 | macro mP@5 | cars | toys |" in md
    assert "| b | 64 | 0.600 | 0.700 | 0.500 | n/a | n/a | 0.600 |" in md


def test_html_summary_has_the_macro_column_only_with_several_domains():
    from ensemble.evaluate.html import summary_table

    both = summary_table([{"model": "a", "dim": 64, **TWO}, {"model": "b", "dim": 64, **ONE}], k=5)
    assert "<th>macro mP@5</th><th>cars</th><th>toys</th>" in both
    assert "<td>0.700</td><td>0.550</td><td>0.300</td>" in both and "<td>0.700</td><td>n/a</td><td>n/a</td>" in both
    assert "macro" not in summary_table([{"model": "b", "dim": 64, **ONE}], k=5)
