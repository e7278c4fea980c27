"""The one resumable-state helper (db3d/core/resume.py): a loop saved part way and resumed from the
file continues exactly as the uninterrupted loop."""

from __future__ import annotations

import pytest
import torch

from db3d.core.resume import load_resume_state, save_resume_state


def _loop(model, opt, gen, steps: range) -> list[float]:
    losses = []
    for _ in steps:
        x = torch.randn(8, 3, generator=gen)
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _fresh(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 1)
    return model, torch.optim.Adam(model.parameters(), lr=1e-2), torch.Generator().manual_seed(seed)


def test_a_resumed_loop_matches_the_uninterrupted_one(tmp_path):
    model, opt, gen = _fresh()
    straight = _loop(model, opt, gen, range(6))

    model, opt, gen = _fresh()
    first = _loop(model, opt, gen, range(3))
    path = tmp_path / "state.pt"
    save_resume_state(path, 3, opt, gen, model=model.state_dict(), log=first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]  # no temp file left

    model, opt, gen = _fresh(seed=1)  # other weights, moments and generator: all come from the file
    state = load_resume_state(path, opt, gen)
    model.load_state_dict(state["model"])
    assert state["step"] == 3 and state["log"] == first
    assert first + _loop(model, opt, gen, range(state["step"], 6)) == straight


def test_no_state_is_none_and_the_optimizer_and_generator_are_untouched(tmp_path):
    model, opt, gen = _fresh()
    before = gen.get_state()
    assert load_resume_state(tmp_path / "none.pt", opt, gen) is None
    assert torch.equal(gen.get_state(), before) and opt.state_dict()["state"] == {}


def test_each_rank_resumes_its_own_generator_and_a_world_size_change_is_refused(tmp_path):
    model, opt, gen = _fresh()
    ranks = [torch.Generator().manual_seed(10 + r).get_state() for r in range(2)]
    path = save_resume_state(tmp_path / "state.pt", 1, opt, gen, ranks, model=model.state_dict())
    for rank in range(2):
        g = torch.Generator()
        load_resume_state(path, _fresh()[1], g, rank=rank, world=2)
        assert torch.equal(g.get_state(), ranks[rank])
    with pytest.raises(RuntimeError, match=r"a training state of 2 rank\(s\); this run has 3"):
        load_resume_state(path, opt, torch.Generator(), rank=0, world=3)
    single = save_resume_state(tmp_path / "one.pt", 1, opt, gen)
    with pytest.raises(RuntimeError, match=r"a training state of 1 rank\(s\); this run has 2"):
        load_resume_state(single, opt, torch.Generator(), rank=0, world=2)
