"""``tuco.progress``: one rule for when a bar shows."""

from tuco import progress


def test_an_inner_run_shows_no_bar_of_its_own_unless_asked():
    from tqdm.auto import tqdm

    assert progress.bar(3, "outside").disable == tqdm(total=3, disable=None).disable  # the terminal decides
    with progress.inner():
        assert progress.bar(3, "inside").disable is True
        assert progress.bar(3, "forced", True).disable is False
    assert progress.bar(3, "off", False).disable is True


def test_the_driver_keeps_the_pair_s_bars_off(tok, monkeypatch):
    from conftest import make_pair

    from tuco.driver import drive

    pair = make_pair("llama", tok)
    shown = []
    real = progress.bar

    def spy(total, desc, progress_=None, **options):
        bar = real(total, desc, progress_, **options)
        shown.append((desc, bar.disable))
        return bar

    monkeypatch.setattr(progress, "bar", spy)

    class Results:
        def is_done(self, record):
            return False

        def write(self, records):
            pass

    drive(
        ["Hi", "Hello"],
        lambda w: [{"id": t, "tuco": r.tuco} for t, r in zip(w, pair.score(w), strict=True)],
        Results(),
        lambda i: False,
    )
    assert ("TuCo", True) in shown  # the pair's bar inside the driver's window
