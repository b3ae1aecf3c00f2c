"""Takes: deterministic, chunked, streamed, cancellable."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from previz.errors import InvalidRecipeError
from previz.recipe import Recipe, resolve
from previz.take import TakeStats


def frames_of(model, recipe, **kw):
    return np.stack([f.image for f in model.generate(recipe, **kw)])


def test_same_recipe_and_seed_give_identical_frames(torch_model, test_pack, cache_dir, text_encoder):
    from previz.take import DraftModel

    recipe = Recipe(prompt="a red cube on a sandy plain", seed=7, seconds=0.5)
    first = frames_of(torch_model, recipe)
    again = frames_of(torch_model, recipe)
    fresh = frames_of(DraftModel(test_pack, "torch", cache_dir=cache_dir, text=text_encoder), recipe)
    assert np.array_equal(first, again) and np.array_equal(first, fresh)
    assert first.std() > 0  # not a constant picture
    assert not np.array_equal(first, frames_of(torch_model, Recipe(prompt=recipe.prompt, seed=8, seconds=0.5)))


def test_a_longer_take_starts_with_the_shorter_one(torch_model):
    short = frames_of(torch_model, Recipe(prompt="rain on a window", seed=3, seconds=0.4))
    long = frames_of(torch_model, Recipe(prompt="rain on a window", seed=3, seconds=1.0))
    assert np.array_equal(long[: len(short)], short)


def test_frames_count_index_and_pts(torch_model):
    frames = list(torch_model.generate(Recipe(prompt="a desert road", seed=1, seconds=1.0)))
    assert len(frames) == 30
    assert [f.index for f in frames] == list(range(30)) == [f.pts for f in frames]
    assert [f.last for f in frames] == [False] * 29 + [True]
    assert frames[0].image.shape == (32, 64, 3) and frames[0].image.dtype == np.uint8
    assert sorted({f.chunk for f in frames}) == list(range(frames[-1].chunk + 1))


def test_an_uncancelled_take_says_so(torch_model):
    stats = TakeStats()
    frames = list(torch_model.generate(Recipe(prompt="a storm", seconds=0.2), stats=stats))
    assert frames[-1].last and not stats.cancelled


def test_first_frames_arrive_before_the_last_chunk_is_computed(torch_model):
    stats = TakeStats()
    recipe = Recipe(prompt="a tall ship", seed=2, seconds=2.0)
    frames = torch_model.generate(recipe, stats=stats)
    first = next(frames)
    assert first.index == 0
    assert stats.chunks_done == 0  # the first chunk is still being decoded
    calls_at_first_frame = stats.denoiser_calls
    rest = list(frames)
    assert len(rest) == 59
    assert stats.chunks_done > 1
    assert calls_at_first_frame < stats.denoiser_calls
    assert calls_at_first_frame == recipe_steps(torch_model)  # exactly one window so far


def recipe_steps(model) -> int:
    return model.pack.draft.steps


def test_cancel_stops_at_the_next_chunk_boundary(torch_model):
    cancel = threading.Event()
    stats = TakeStats()
    got = []
    for frame in torch_model.generate(Recipe(prompt="a storm", seconds=3.0), cancel=cancel, stats=stats):
        got.append(frame)
        if frame.index == 0:
            cancel.set()
    assert stats.chunks_done == 1 and stats.cancelled
    assert 0 < len(got) < 90
    assert got[-1].chunk == 0 and not got[-1].last


def test_cancel_stops_a_window_before_its_next_denoiser_call(torch_model, monkeypatch):
    """A superseded take lets go of the engines within one denoiser call, not one window: on a GPU a window
    is a fifth of a second, on this CPU's live pack a tenth."""
    cancel = threading.Event()
    stats = TakeStats()
    run = torch_model.denoiser.run

    def cancelled_during_the_first_call(inputs):
        cancel.set()
        return run(inputs)

    monkeypatch.setattr(torch_model.denoiser, "run", cancelled_during_the_first_call)
    frames = list(torch_model.generate(Recipe(prompt="a storm", seconds=1.0), cancel=cancel, stats=stats))
    assert recipe_steps(torch_model) > 1
    assert frames == [] and stats.cancelled and stats.denoiser_calls == 1 and stats.decoder_calls == 0


def test_a_step_cancelled_mid_window_leaves_the_take_where_it_was(torch_model, monkeypatch):
    from previz.take import Take, TakeCancelled

    cancel = threading.Event()
    recipe = Recipe(prompt="a slow dolly past a diner", seed=3, seconds=1.0)
    take = Take(torch_model, recipe, cancel=cancel)
    first = [f.image for f in take.step().frames]
    run = torch_model.denoiser.run
    monkeypatch.setattr(torch_model.denoiser, "run", lambda inputs: cancel.set() or run(inputs))
    with pytest.raises(TakeCancelled):
        take.step()
    assert take.state.next_chunk == 1
    monkeypatch.setattr(torch_model.denoiser, "run", run)
    cancel.clear()
    second = [f.image for f in take.step().frames]
    assert np.array_equal(np.stack(first + second), frames_of(torch_model, recipe)[: len(first) + len(second)])


def pipelined(model, monkeypatch) -> None:
    """As on CUDA, where the engines only queue work: forced here on the CPU, where the order of the engine
    calls is the order of the device's queue."""
    monkeypatch.setattr(model, "asynchronous", True)
    monkeypatch.setattr(model, "pipelined", True)


def test_a_pipelined_take_queues_the_next_window_behind_this_chunks_decoding(torch_model, monkeypatch):
    """Window k+1 is queued once chunk k's first frame is out, behind every decode of chunk k: the device
    never waits for the host between windows, and the frames are the serial take's."""
    recipe = Recipe(prompt="a crane shot over rooftops", seed=5, seconds=1.0, camera={"preset": "orbit_left"})
    serial = list(torch_model.generate(recipe))
    events: list[str] = []
    for engine, name in ((torch_model.denoiser, "denoise"), (torch_model.decoder, "decode")):
        monkeypatch.setattr(engine, "run", lambda inputs, run=engine.run, name=name: events.append(name) or run(inputs))
    pipelined(torch_model, monkeypatch)
    frames = []
    for frame in torch_model.generate(recipe):
        events.append(f"frame {frame.chunk}")
        frames.append(frame.image)
    assert np.array_equal(np.stack(frames), np.stack([f.image for f in serial]))

    from previz.take import Take

    chunks = Take(torch_model, recipe).chunks
    per_chunk = [sum(f.chunk == k for f in serial) for k in range(len(chunks))]
    expected: list[str] = []
    for k, chunk in enumerate(chunks):  # window k, all of chunk k's decoding, then the frames it overtook
        expected += ["denoise"] * recipe_steps(torch_model) + ["decode"] * chunk.keep
        expected += [f"frame {k - 1}"] * (per_chunk[k - 1] - 1) if k else []
        expected.append(f"frame {k}")
    expected += [f"frame {len(chunks) - 1}"] * (per_chunk[-1] - 1)
    assert len(chunks) > 2 and events == expected


def test_a_pipelined_take_whose_next_window_fails_sends_this_chunks_frames_first(torch_model, monkeypatch):
    recipe = Recipe(prompt="a crane shot over rooftops", seed=5, seconds=1.0)
    serial = [f.chunk for f in torch_model.generate(recipe)]
    run, calls = torch_model.denoiser.run, []

    def fails_in_the_second_window(inputs):
        calls.append(1)
        if len(calls) > recipe_steps(torch_model):
            raise RuntimeError("the second window failed")
        return run(inputs)

    monkeypatch.setattr(torch_model.denoiser, "run", fails_in_the_second_window)
    pipelined(torch_model, monkeypatch)
    got = []
    with pytest.raises(RuntimeError, match="the second window failed"):
        for frame in torch_model.generate(recipe):
            got.append(frame.chunk)
    assert got == [c for c in serial if c == 0]  # every frame of the first chunk, then the error


def test_a_warm_take_runs_one_window_and_keeps_nothing(torch_model):
    """What a server runs before it reports ready: one window of a take through every engine, frames
    thrown away."""
    from previz.take import WARM_UP_SHOT

    said: list[str] = []
    stats = torch_model.warm_take(said.append)
    assert stats.denoiser_calls == recipe_steps(torch_model) and stats.decoder_calls >= 1
    assert stats.first_frame_s is not None and stats.chunks_done == 0  # one window, left after its first frame
    assert WARM_UP_SHOT in torch_model.text._cache
    assert said[0] == "warming up a take" and said[-1].startswith("take ready: first frame after")


def test_the_recorded_recipe_names_the_backend_that_ran(torch_model):
    meta = torch_model.metadata(resolve(Recipe(prompt="a cube", backend="onnxruntime"), torch_model.pack))
    assert meta["recipe"]["backend"] == "torch"
    assert meta["engines"]["denoiser"]["backend"] == "torch"


def test_on_chunk_receives_the_kept_latents(torch_model, test_pack):
    latents = []
    frames = list(torch_model.generate(Recipe(prompt="fog", seconds=1.0), on_chunk=lambda c, z: latents.append(z)))
    total = np.concatenate(latents, axis=2)
    assert total.shape[2] == test_pack.latent.latent_frames(len(frames))
    assert total.shape[1] == test_pack.latent.channels


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(prompt=""), "prompt"),
        (dict(prompt="   "), "prompt"),
        (dict(prompt="x" * 1_000_000), "prompt"),
        (dict(seconds=0), "seconds"),
        (dict(seconds=-1), "seconds"),
        (dict(seconds=99), "seconds"),
        (dict(seconds=float("nan")), "seconds"),
        (dict(width=100), "width"),
        (dict(height=40), "height"),
        (dict(width=8192), "width"),
        (dict(seed=-1), "seed"),
        (dict(seed="7"), "seed"),
        (dict(steps=0), "steps"),
        (dict(guidance=0.5), "guidance"),
    ],
)
def test_bad_recipes_name_the_field_and_value(test_pack, change, field):
    recipe = Recipe(**{"prompt": "a cube", **change})
    with pytest.raises(InvalidRecipeError) as err:
        resolve(recipe, test_pack)
    assert err.value.field == field
    assert err.value.message.startswith(f"{field} = ")
    assert len(err.value.message) < 300  # even a 1 MB prompt gives a short message


def test_resolve_fills_the_pack_defaults(test_pack):
    r = resolve(Recipe(prompt="a cube"), test_pack)
    assert (r.width, r.height, r.steps) == (64, 32, 2)
    assert Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(InvalidRecipeError, match="unknown recipe field 'colour'"):
        Recipe.from_dict({**r.to_dict(), "colour": "red"})


def test_the_camera_reaches_the_denoiser(torch_model):
    assert "camera" in torch_model.denoiser_graph.inputs
    assert torch_model.denoiser_graph.inputs["camera"][1] == 24
    still = frames_of(torch_model, Recipe(prompt="a cube", seed=4, seconds=0.5))
    orbit = frames_of(torch_model, Recipe(prompt="a cube", seed=4, seconds=0.5,
                                          camera={"preset": "orbit_left", "speed": 3}))
    assert not np.array_equal(still, orbit)
    again = frames_of(torch_model, Recipe(prompt="a cube", seed=4, seconds=0.5, camera={"preset": "static"}))
    assert np.array_equal(still, again)  # no camera = a locked-off camera


def test_a_camera_only_change_never_re_encodes_text(torch_model):
    prompt = "a camera-only change, unique prompt"
    before = torch_model.text.encode_calls
    for camera in ({"preset": "pan_left"}, {"preset": "dolly_in", "speed": 2}, {"preset": "zoom_in"}):
        list(torch_model.generate(Recipe(prompt=prompt, seconds=0.2, camera=camera)))
    assert torch_model.text.encode_calls == before + 1


def test_bad_cameras_are_recipe_errors_naming_the_camera(test_pack):
    from previz.camera import CameraError

    with pytest.raises(CameraError) as err:
        resolve(Recipe(prompt="a cube", camera={"preset": "barrel_roll"}), test_pack)
    assert err.value.field == "camera.preset" and "barrel_roll" in err.value.message


def test_a_take_resumes_from_its_saved_state_with_the_same_frames(torch_model):
    """A Take's whole state between chunks is (next chunk, context latents): restarting from it changes nothing."""
    from previz.take import Take, TakeState

    recipe = Recipe(prompt="a slow dolly past a diner", seed=3, seconds=1.0)
    whole = frames_of(torch_model, recipe)
    first = Take(torch_model, recipe)
    done: list[np.ndarray] = []
    for _ in range(2):
        _, _, frames = first.step()
        done += [f.image for f in frames]
    saved = TakeState(first.state.next_chunk, first.state.context.clone())
    again = Take(torch_model, recipe, state=saved)
    rest: list[np.ndarray] = []
    while not again.done:
        _, _, frames = again.step()
        rest += [f.image for f in frames]
    assert len(again.chunks) > 2
    assert np.array_equal(np.stack(done + rest), whole)


def test_building_the_next_window_early_changes_no_frame(torch_model, monkeypatch):
    """On an asynchronous device (CUDA) a take builds window k+1's inputs while window k is denoised:
    the inputs are a function of the recipe and the chunk alone, so the frames are the same."""
    from previz.take import Take

    recipe = Recipe(prompt="a crane shot over rooftops", seed=5, seconds=1.0, camera={"preset": "orbit_left"})
    in_order = frames_of(torch_model, recipe)
    built: list[int] = []
    inputs = Take.window_inputs
    monkeypatch.setattr(Take, "window_inputs", lambda self, chunk: built.append(chunk.index) or inputs(self, chunk))
    monkeypatch.setattr(torch_model, "asynchronous", True)
    take = Take(torch_model, recipe)
    take.step()
    assert built == [0, 1]  # the second window's inputs exist before the first window's frames are read
    built.clear()
    early = frames_of(torch_model, recipe)
    assert np.array_equal(early, in_order)
    chunks = len(Take(torch_model, recipe).chunks)
    assert chunks > 2 and built == list(range(chunks))  # each window's inputs built once, in order
