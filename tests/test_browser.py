"""The demo in a real headless Chromium (Debian's package): choose digits, press Generate, and check that the page
shows the grid of those digits: the pipeline's own output for that seed, pixel for pixel. `.ci/run` installs the
browser and runs these with `python -m pytest -m browser`; without the browser they fail, never pass."""

import numpy as np
import pytest

from ddpm_pipeline.demo import Sampler, build_demo
from tests.browser_page import DemoPage, browser_available
from tests.conftest import tiny_pipeline
from tests.test_demo import expected_grid

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(seed=3)


@pytest.fixture(scope="module")
def page(pipe):
    assert browser_available(), "no chromium/chromedriver: apt-get install -y chromium chromium-driver"
    demo = build_demo(Sampler(["tiny"], load=lambda _: pipe))
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1")
    page = DemoPage(url)
    yield page
    page.close()
    demo.close()


def test_the_page_shows_the_grid_of_the_chosen_digits(page, pipe, tmp_path):
    page.choose([3, 8], 6, 5)
    shown = page.generate()
    np.testing.assert_array_equal(np.asarray(shown.convert("L")), np.asarray(expected_grid(pipe, [3, 8], 6, 5)))
    assert "6 digits in" in page.timing()
    page.screenshot(tmp_path / "page.png")
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_a_bad_count_gets_a_message_on_the_page(page):
    page.choose([1], 1000, 0)
    page.driver.find_element("css selector", "#generate").click()
    assert "got 1,000" in page.message()


def test_the_page_fetched_nothing_from_outside(page):
    requested = page.requests()
    assert requested, "the browser's network log is empty"
    outside = [url for url in requested if not url.startswith(("http://127.0.0.1", "data:", "blob:"))]
    assert outside == []
