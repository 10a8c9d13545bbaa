import math

import numpy as np
import pytest

from proteus.metrics import METRIC_LABELS, AccuracyTracker, mean_std, metrics_from_matrix

NAN = math.nan

# Hand matrix used throughout (row i = task i, column t = after task t):
#
#            t=0   t=1   t=2
#   i=0     0.80  0.90  0.70     task 0 improves after task 1, then drops
#   i=1      -    0.60  0.66     task 1 ends above its only earlier value
#   i=2      -     -    0.95
#
# Tracker tests use unequal test sizes n = [100, 50, 200], i.e. correct counts
#   task 0: 80, 90, 70 / 100;  task 1: 30, 33 / 50;  task 2: 190 / 200
# so the sample-weighted A_t are
#   A_0 = 80/100                   = 0.80
#   A_1 = (90 + 30) / 150          = 0.80      (the unweighted mean would be 0.75)
#   A_2 = (70 + 33 + 190) / 350    = 293/350   (the unweighted mean would be 0.77)
ACC = np.array(
    [
        [0.80, 0.90, 0.70],
        [NAN, 0.60, 0.66],
        [NAN, NAN, 0.95],
    ]
)
SIZES = [100, 50, 200]
CORRECT = {(0, 0): 80, (0, 1): 90, (0, 2): 70, (1, 1): 30, (1, 2): 33, (2, 2): 190}
A_SEEN = [0.80, 0.80, 293 / 350]


def filled_tracker() -> AccuracyTracker:
    tracker = AccuracyTracker(num_tasks=3)
    for t in range(3):
        for i in range(t + 1):
            tracker.record(after_task=t, task=i, correct=CORRECT[i, t], total=SIZES[i])
    return tracker


def test_labels_cover_every_metric_key():
    result = metrics_from_matrix(ACC, A_SEEN)
    assert list(result) == list(METRIC_LABELS)
    assert METRIC_LABELS["final_accuracy"] == "final accuracy"
    assert METRIC_LABELS["task_retrieval_accuracy"] == "task-retrieval accuracy"


def test_metrics_from_hand_matrix():
    m = metrics_from_matrix(ACC, A_SEEN)
    # final = A_2 = 293/350
    assert m["final_accuracy"] == pytest.approx(293 / 350)
    # AIA = (0.80 + 0.80 + 293/350) / 3
    assert m["average_incremental_accuracy"] == pytest.approx((1.6 + 293 / 350) / 3)
    # Acc@1 = unweighted mean of the last column = (0.70 + 0.66 + 0.95) / 3 = 0.77
    assert m["average_accuracy"] == pytest.approx(0.77)
    # forgetting: task 0: max(0.80, 0.90) - 0.70 = 0.20; task 1: max(0.60) - 0.66 = -0.06
    #   -> (0.20 - 0.06) / 2 = 0.07   (max excludes the last column and is not clipped at 0)
    assert m["average_forgetting"] == pytest.approx(0.07)
    # BWT: task 0: 0.70 - 0.80 = -0.10; task 1: 0.66 - 0.60 = 0.06 -> -0.04 / 2 = -0.02
    assert m["backward_transfer"] == pytest.approx(-0.02)
    assert m["task_retrieval_accuracy"] is None


def test_forgetting_uses_the_best_earlier_accuracy_not_the_first():
    # Task 0 peaks at t=2 (0.9) then ends at 0.5: forgetting 0.4, whereas the diagonal-based
    # BWT sees 0.5 - 0.6 = -0.1. Tasks 1, 2: 0.7 - 0.5 = 0.2 and 0.8 - 0.8 = 0 forgotten.
    acc = np.array(
        [
            [0.6, 0.7, 0.9, 0.5],
            [NAN, 0.7, 0.6, 0.5],
            [NAN, NAN, 0.8, 0.8],
            [NAN, NAN, NAN, 1.0],
        ]
    )
    m = metrics_from_matrix(acc, [0.6, 0.7, 0.75, 0.7])
    assert m["average_forgetting"] == pytest.approx((0.4 + 0.2 + 0.0) / 3)
    # BWT: (0.5-0.6) + (0.5-0.7) + (0.8-0.8) = -0.3 -> -0.1
    assert m["backward_transfer"] == pytest.approx(-0.1)
    assert m["average_incremental_accuracy"] == pytest.approx(2.75 / 4)
    assert m["average_accuracy"] == pytest.approx((0.5 + 0.5 + 0.8 + 1.0) / 4)


def test_single_task_has_no_forgetting_or_bwt():
    m = metrics_from_matrix(np.array([[0.9]]), [0.9], task_retrieval_accuracy=1.0)
    assert m["average_forgetting"] is None
    assert m["backward_transfer"] is None
    assert m["final_accuracy"] == pytest.approx(0.9)
    assert m["average_incremental_accuracy"] == pytest.approx(0.9)
    assert m["average_accuracy"] == pytest.approx(0.9)
    assert m["task_retrieval_accuracy"] == 1.0


def test_partial_steps_read_only_the_finished_block():
    # Two finished steps of a 3-task run: the third column is ignored even though it is NaN.
    m = metrics_from_matrix(np.c_[ACC[:, :2], [NAN] * 3], [0.8, 0.8])
    assert m["final_accuracy"] == pytest.approx(0.8)
    assert m["average_accuracy"] == pytest.approx((0.90 + 0.60) / 2)
    assert m["average_forgetting"] == pytest.approx(0.80 - 0.90)  # task 0 improved: -0.10
    assert m["backward_transfer"] == pytest.approx(0.10)


def test_no_steps_gives_all_none_and_missing_cell_is_an_error():
    assert all(v is None for v in metrics_from_matrix(np.full((3, 3), NAN), []).values())
    broken = ACC.copy()
    broken[1, 2] = NAN
    with pytest.raises(ValueError, match="task 1 after task 2"):
        metrics_from_matrix(broken, A_SEEN)


def test_tracker_weights_accuracy_seen_by_task_size():
    tracker = filled_tracker()
    np.testing.assert_allclose(tracker.accuracy_seen(), A_SEEN)
    np.testing.assert_allclose(tracker.accuracy_matrix(), ACC)  # NaN positions must match too
    assert tracker.n_test.tolist() == SIZES
    assert tracker.filled.tolist() == [True, True, True]
    summary = tracker.summary()
    assert summary == pytest.approx(metrics_from_matrix(ACC, A_SEEN))
    assert summary["final_accuracy"] == pytest.approx(293 / 350)
    assert summary["final_accuracy"] != pytest.approx(summary["average_accuracy"])


def test_tracker_partial_run_summarises_finished_steps_only():
    tracker = AccuracyTracker(num_tasks=3)
    tracker.record(0, 0, 80, 100)
    tracker.record(1, 0, 90, 100)  # step 1 started but task 1 not yet evaluated
    assert tracker.filled.tolist() == [True, False, False]
    assert tracker.steps_done == 1
    np.testing.assert_allclose(tracker.accuracy_seen(), [0.8])
    acc = tracker.accuracy_matrix()
    assert acc[0, 1] == pytest.approx(0.9) and math.isnan(acc[1, 1])
    summary = tracker.summary()
    assert summary["final_accuracy"] == pytest.approx(0.8)
    assert summary["average_forgetting"] is None and summary["backward_transfer"] is None

    tracker.record(1, 1, 30, 50)
    assert tracker.steps_done == 2
    np.testing.assert_allclose(tracker.accuracy_seen(), [0.8, 0.8])
    assert tracker.summary()["average_forgetting"] == pytest.approx(-0.1)


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 1, 5, 10), "not yet seen"),
        ((3, 0, 5, 10), "outside"),
        ((0, 0, 11, 10), "outside 0..10"),
        ((0, 0, 0, 0), "no test samples"),
    ],
)
def test_tracker_rejects_bad_records(args, message):
    with pytest.raises(ValueError, match=message):
        AccuracyTracker(num_tasks=3).record(*args)


def test_tracker_rejects_changed_test_size():
    tracker = AccuracyTracker(num_tasks=2)
    tracker.record(0, 0, 5, 10)
    with pytest.raises(ValueError, match="10 test samples, now 12"):
        tracker.record(1, 0, 5, 12)


def test_retrieval_accuracy_and_confusion():
    tracker = filled_tracker()
    assert tracker.summary()["task_retrieval_accuracy"] is None

    tracker.record_retrieval(np.array([0, 0]), np.array([0, 1]))  # an earlier step: 1/2
    true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    pred = np.array([0, 1, 0, 1, 1, 2, 2, 0, 2, 2])  # wrong at positions 1 and 7 -> 8/10
    tracker.record_retrieval(true, pred)

    assert tracker.retrieval_accuracy_seen == pytest.approx([0.5, 0.8])
    assert tracker.retrieval_history == pytest.approx([0.5, 0.8])
    assert tracker.summary()["task_retrieval_accuracy"] == pytest.approx(0.8)
    # rows = true task, columns = predicted task; the first call's counts are gone
    assert tracker.retrieval_confusion.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 4]]
    assert tracker.retrieval_confusion.sum() == true.size


def test_retrieval_rejects_bad_input():
    tracker = AccuracyTracker(num_tasks=2)
    with pytest.raises(ValueError, match="entries"):
        tracker.record_retrieval(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="outside 0..1"):
        tracker.record_retrieval(np.array([0, 2]), np.array([0, 1]))
    assert tracker.retrieval_confusion is None and tracker.retrieval_accuracy_seen == []


def test_mean_std_is_none_aware():
    runs = [
        {"a": 0.5, "b": None},
        {"a": 0.7, "b": 0.2},
        {"a": 0.9, "b": None, "c": None},
    ]
    out = mean_std(runs)
    assert list(out) == ["a", "b", "c"]
    assert out["a"]["mean"] == pytest.approx(0.7)
    # population std: sqrt((0.2^2 + 0 + 0.2^2) / 3) = sqrt(0.08 / 3)
    assert out["a"]["std"] == pytest.approx(math.sqrt(0.08 / 3))
    assert out["a"]["n"] == 3
    assert out["b"] == pytest.approx({"mean": 0.2, "std": 0.0, "n": 1})
    assert out["c"] == {"mean": None, "std": None, "n": 0}


def test_mean_std_over_tracker_summaries_and_bad_values():
    single = metrics_from_matrix(np.array([[0.9]]), [0.9])
    out = mean_std([filled_tracker().summary(), single])
    assert out["final_accuracy"]["mean"] == pytest.approx((293 / 350 + 0.9) / 2)
    assert out["average_forgetting"]["n"] == 1  # None for the single-task run
    with pytest.raises(TypeError, match="a:"):
        mean_std([{"a": "0.5"}])


def test_task_il_accuracy_is_recorded_once_and_checked():
    tracker = AccuracyTracker(2)
    tracker.record(0, 0, 8, 10)
    assert tracker.summary()["task_il_accuracy"] is None
    tracker.record(1, 0, 5, 10)
    tracker.record(1, 1, 9, 10)
    tracker.record_task_il(18, 20)
    summary = tracker.summary()
    assert summary["task_il_accuracy"] == pytest.approx(0.9)
    assert summary["final_accuracy"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="task-IL"):
        tracker.record_task_il(21, 20)
    with pytest.raises(ValueError, match="task-IL"):
        tracker.record_task_il(0, 0)


def test_argmax_within_task():
    from proteus.learners.base import argmax_within_task
    scores = np.array([[0.0, 5.0, 1.0, 2.0],
                       [9.0, 0.0, 1.0, 2.0],
                       [0.0, 0.0, 3.0, 2.0]])
    got = argmax_within_task(scores, np.array([1, 1, 0]), [[0, 1], [2, 3]])
    assert got.tolist() == [3, 3, 0]
