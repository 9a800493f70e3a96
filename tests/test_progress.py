from ensemble.progress import label, step


def test_a_step_labels_everything_inside_it_and_only_there():
    assert label("member x stage 1/2") == "member x stage 1/2"
    with step("[2/5]"):
        assert label("member x stage 1/2") == "[2/5] member x stage 1/2"
        with step("[3/5]"):
            assert label("embed q.csv") == "[3/5] embed q.csv"
        assert label("a") == "[2/5] a"
    assert label("a") == "a"
