import pytest


@pytest.fixture(scope="module")
def running_app(tmp_path_factory):
    """app.py's demo around a tiny random model, served on 127.0.0.1 for the tests of one module.

    Small video (8 frames at 64 px), a 1 MB upload limit and a 1 MP pixel limit keep the tests fast and the limit testable; the
    upload rate limit is lifted (every test uploads from 127.0.0.1; tests/app/test_app.py checks it on its own
    server). Yields (url, pipe, settings).

    Module scope, not session scope: an idle gradio server keeps ~8 % of a core busy (its event loop's polling), which
    every later test of the session would pay for.
    """
    import socket

    import app
    from helpers import toy_pipeline

    checkpoint = tmp_path_factory.mktemp("app-checkpoint")
    toy_pipeline().save_pretrained(checkpoint)
    pipe = app.load_pipeline(checkpoint, "cpu")  # through from_pretrained, as `python app.py` does
    settings = app.AppSettings(video_frames=8, video_size=64, max_file_size_mb=1.0, max_pixels=1_000_000,
                               concurrency_limit=2, uploads_per_minute=10_000)
    demo = app.build_demo(pipe, settings)
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app.launch(demo, host="127.0.0.1", port=port, block=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", pipe, settings
    finally:
        demo.close()
        demo.dd3g_app.close()
